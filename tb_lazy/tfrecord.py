"""Just enough of the TFRecord framing to tell whether an event file holds data yet.

An event file is a sequence of records, each framed as::

    uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)

Every writer (tensorboardX, ``torch.utils.tensorboard``, TensorFlow, TensorBoard's own)
starts a file with a header record whose event holds ``file_version: "brain.Event:2"``,
and writes it when the writer is constructed. Data is any complete record after that.
Read here with the standard library alone: importing TensorBoard would cost the idle
watcher ~100 MB.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

HEADER_MARK = b"brain.Event:"  # the file_version string of the header event
_FRAME = struct.Struct("<QI")  # length, masked CRC of the length
_CHECK_LIMIT = 1 << 16  # data CRCs are checked for records up to this size; larger ones trust the length CRC


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum TFRecord uses."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class Progress:
    """How far one event file has been read: complete records are read once, in order.

    ``offset`` is where the next record starts; ``broken`` is set when the bytes there
    are not a record (not a TFRecord file, or a writer that crashed mid-record).
    """

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset
        self.broken = False

    def data_after(self, handle: BinaryIO, size: int, *, after: int = 0) -> bool:
        """Read the complete records from ``offset`` on; True at the first data record
        (not the header) that ends beyond byte ``after``."""
        while not self.broken and self.offset + _FRAME.size <= size:
            handle.seek(self.offset)
            frame = handle.read(_FRAME.size)
            if len(frame) < _FRAME.size:
                return False
            length, length_crc = _FRAME.unpack(frame)
            if masked_crc32c(frame[:8]) != length_crc:
                self.broken = True
                return False
            end = self.offset + _FRAME.size + length + 4
            if end > size:
                return False  # not all of it is on disk yet
            is_header = False
            if length <= _CHECK_LIMIT:
                data = handle.read(length)
                (data_crc,) = struct.unpack("<I", handle.read(4))
                if len(data) < length or masked_crc32c(data) != data_crc:
                    return False  # bytes still being written; read again on the next change
                is_header = self.offset == 0 and HEADER_MARK in data
            self.offset = end
            if not is_header and end > after:
                return True
        return False


def is_record_start(handle: BinaryIO, offset: int, size: int) -> bool:
    """True if a record's frame (with a valid length CRC) starts at ``offset``."""
    if offset + _FRAME.size > size:
        return False
    handle.seek(offset)
    frame = handle.read(_FRAME.size)
    return len(frame) == _FRAME.size and masked_crc32c(frame[:8]) == _FRAME.unpack(frame)[1]
