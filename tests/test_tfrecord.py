"""The TFRecord framing read without TensorBoard, against real tensorboardX files."""

from __future__ import annotations

import io

from conftest import header_only, write_scalar

from tb_lazy.detect.rundata import RunData
from tb_lazy.detect.tfrecord import Progress, crc32c, masked_crc32c


def test_crc32c_matches_the_published_check_value():
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


def test_masked_crc_matches_tensorboards_own():
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as theirs

    for data in (b"", b"x", bytes(range(256)) * 3):
        assert masked_crc32c(data) == theirs(data)


def test_data_counts_only_once_its_whole_record_is_there(tmp_path):
    """Every prefix of a real file: header-only and half-written records are not data."""
    data = write_scalar(tmp_path / "run").read_bytes()
    header = len(header_only(tmp_path / "empty").read_bytes())
    for cut in range(len(data) + 1):
        found = Progress().data_after(io.BytesIO(data[:cut]), cut)
        assert found == (cut == len(data)), (cut, header, len(data))


def test_a_file_that_is_not_tfrecord_never_counts(tmp_path):
    path = tmp_path / "events.out.tfevents.1.x"
    path.write_bytes(b"hello, world" * 100)
    assert RunData(None).check(str(path)) is False
