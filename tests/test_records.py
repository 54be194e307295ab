import io

import pytest
import tensorflow as tf

from tfrecord_schema.records import RecordWriter, read_records


@pytest.mark.parametrize("compression", ["", "GZIP"])
def test_tensorflow_reads_our_tfrecords(tmp_path, compression):
    payloads = [bytes([i]) * (i * 100 + 1) for i in range(20)]
    path = tmp_path / "x.tfrecord"
    with open(path, "wb") as f, RecordWriter(f, compression) as writer:
        for p in payloads:
            writer.write(p)
    got = [r.numpy() for r in tf.data.TFRecordDataset(str(path), compression_type=compression or None)]
    assert got == payloads
    with open(path, "rb") as f:
        assert list(read_records(f, compression)) == payloads


def test_concatenated_gzip_parts_read_as_one_file(tmp_path):
    parts = []
    for chunk in ([b"a", b"bb"], [b"ccc"]):
        buf = io.BytesIO()
        with RecordWriter(buf, "GZIP") as writer:
            for p in chunk:
                writer.write(p)
        parts.append(buf.getvalue())
    path = tmp_path / "joined"
    path.write_bytes(b"".join(parts))
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path), compression_type="GZIP")] == [b"a", b"bb", b"ccc"]


def test_corruption_is_detected():
    buf = io.BytesIO()
    with RecordWriter(buf) as writer:
        writer.write(b"hello world")
    data = bytearray(buf.getvalue())
    data[14] ^= 0xFF
    with pytest.raises(ValueError, match="corrupt data CRC at record 0"):
        list(read_records(io.BytesIO(bytes(data)), name="x"))
    with pytest.raises(ValueError, match="truncated"):
        list(read_records(io.BytesIO(buf.getvalue()[:-2])))
    with pytest.raises(ValueError, match="compression must be one of"):
        RecordWriter(io.BytesIO(), "ZLIB")
