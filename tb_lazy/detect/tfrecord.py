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
from collections.abc import Iterator
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

    ``offset`` is where the next record starts. Where the bytes there are not a record
    (a writer that crashed mid-record, then another that appended to the file; a corrupt
    record; not a TFRecord file at all) the reader re-synchronises: it looks further on
    for the next place where a whole, checksummed record starts (``syncing``).
    """

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset
        self.syncing = False  # True while ``offset`` is only where to go on looking for a record

    def data_after(self, handle: BinaryIO, size: int, *, after: int = 0, since: float | None = None) -> bool:
        """Read the complete records from ``offset`` on; True at the first data record
        (not a header) that ends beyond byte ``after`` and, if ``since`` is given and the
        record says when it was written (an event's ``wall_time``), was written since then.

        ``size`` is the file's size as last seen; the file may have shrunk since, which
        reads as records not (yet) there.
        """
        while True:
            if self.syncing and not self._resync(handle, size):
                return False
            start = self.offset
            record = _read_record(handle, start, size)
            if record is _INCOMPLETE:
                return False
            if record is _CORRUPT:
                self._corrupt(start)
                continue
            end, data, data_crc = record
            self.offset = end
            written = None if _is_header(data) else _wall_time(data)
            if _is_header(data) or end <= after or (since is not None and written is not None and written < since):
                continue  # not this run's data: its checksum doesn't matter (and isn't computed)
            if data_crc is None or masked_crc32c(data) == data_crc:
                return True
            # All its bytes are there but don't match: either still settling (the last record:
            # look again on the next change) or corrupt (more follows it: the writer moved on).
            if end >= size:
                self.offset = start
                return False
            self._corrupt(start)

    def _corrupt(self, start: int) -> None:
        """No sound record at ``start``: look for the next one from the byte after it."""
        self.offset = start + 1
        self.syncing = True

    def _resync(self, handle: BinaryIO, size: int) -> bool:
        """Move ``offset`` to the next place a whole record starts; False (``offset`` moved to
        where to go on later) if there is none yet in the bytes up to ``size``."""
        while self.offset + _FRAME.size <= size:
            handle.seek(self.offset)
            chunk = handle.read(min(size - self.offset, _RESYNC_CHUNK))
            for candidate in _frame_candidates(chunk):  # a sound frame: a record starts there
                self.offset += candidate
                self.syncing = False
                return True
            if len(chunk) < _FRAME.size:
                return False
            self.offset += len(chunk) - _FRAME.size + 1
        return False


_RESYNC_CHUNK = 1 << 20  # bytes read at a time while looking for the next record
_INCOMPLETE = object()  # the record is not all on disk yet
_CORRUPT = object()  # no record starts here


def _frame_candidates(chunk: bytes) -> Iterator[int]:
    """Offsets in ``chunk``, in order, where a record's frame (with a valid length CRC) starts.

    A record's length is far below 4 GiB, so the top four bytes of its 8-byte length are
    zero: only those places are checksummed."""
    position = chunk.find(b"\0\0\0\0", 4)
    while position != -1:
        start = position - 4
        frame = chunk[start : start + _FRAME.size]
        if len(frame) == _FRAME.size and masked_crc32c(frame[:8]) == _FRAME.unpack(frame)[1]:
            yield start
        position = chunk.find(b"\0\0\0\0", position + 1)


def _read_record(handle: BinaryIO, offset: int, size: int) -> tuple[int, bytes, int | None] | object:
    """The record at ``offset``: (its end, its data, the data's CRC as stored — None for a
    large record, of which only the first bytes are read), ``_INCOMPLETE`` if not all of
    it is there (yet), or ``_CORRUPT`` (no sound frame starts there)."""
    if offset + _FRAME.size > size:
        return _INCOMPLETE
    handle.seek(offset)
    frame = handle.read(_FRAME.size)
    if len(frame) < _FRAME.size:
        return _INCOMPLETE  # the file shrank since its size was read
    length, length_crc = _FRAME.unpack(frame)
    if masked_crc32c(frame[:8]) != length_crc:
        return _CORRUPT
    end = offset + _FRAME.size + length + 4
    if end > size:
        return _INCOMPLETE
    if length > _CHECK_LIMIT:
        head = handle.read(_WALL_TIME.size + 1)
        return _INCOMPLETE if len(head) < _WALL_TIME.size + 1 else (end, head, None)
    body = handle.read(length + 4)
    if len(body) < length + 4:
        return _INCOMPLETE
    (data_crc,) = struct.unpack("<I", body[length:])
    return end, body[:length], data_crc


_WALL_TIME = struct.Struct("<d")


def _wall_time(data: bytes) -> float | None:
    """An event's ``wall_time`` (field 1, a double, serialised first), if it has one."""
    if len(data) > _WALL_TIME.size and data[0] == 0x09:
        (value,) = _WALL_TIME.unpack_from(data, 1)
        return value if value == value else None  # NaN: unknown
    return None


def _is_header(data: bytes) -> bool:
    """The file-version event every writer starts a file with (it is small)."""
    return len(data) < 128 and HEADER_MARK in data


def is_record_start(handle: BinaryIO, offset: int, size: int) -> bool:
    """True if a record's frame (with a valid length CRC) starts at ``offset``."""
    if offset + _FRAME.size > size:
        return False
    handle.seek(offset)
    frame = handle.read(_FRAME.size)
    return len(frame) == _FRAME.size and masked_crc32c(frame[:8]) == _FRAME.unpack(frame)[1]
