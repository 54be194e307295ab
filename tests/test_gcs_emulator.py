"""The project's gs:// clients against a real local GCS emulator (tests/gcs_emulator.py).

gcsfs, Apache Beam's FileSystems (gcsio) and TensorFlow's own GCS client (tf.io.gfile, tf.data) each
write, list, read and delete objects; a file written by one client is read by another, as a
dataset written by the Beam job on GCS is read by the trainer. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip(
    "gcp_storage_emulator", reason="the GCS emulator comes with the test extra: pip install -e '.[test]'"
)

from gcs_emulator import GOOGLE_STORAGE_HOSTS, GcsEmulator  # noqa: E402

from conftest import GCS_BUCKET as BUCKET  # noqa: E402


@pytest.fixture
def prefix(gcs, request):
    """gs://BUCKET/<test name>/: each test writes under its own prefix."""
    return gcs.url(f"{request.node.name}/")


def test_gcsfs_write_list_read_delete(gcs, prefix):
    # In a child process: gcsfs reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT when first imported, and a
    # process that has used gcsfs must not fork workers afterwards (they hang), so it stays out of
    # the test process.
    script = textwrap.dedent(
        """
        import json, sys
        import gcsfs

        prefix = sys.argv[1]
        fs = gcsfs.GCSFileSystem()
        with fs.open(prefix + "dir/a.bin", "wb") as f:
            f.write(b"gcsfs" * 1000)
        fs.pipe(prefix + "dir/b.txt", b"second")
        out = {
            "class": type(fs).__module__ + "." + type(fs).__name__,
            "ls": sorted(fs.ls(prefix + "dir")),
            "size": fs.size(prefix + "dir/a.bin"),
            "read": fs.cat(prefix + "dir/b.txt").decode(),
            "prefix_exists": fs.exists(prefix + "dir"),
        }
        fs.rm(prefix + "dir/a.bin")
        out["after_rm"] = sorted(fs.ls(prefix + "dir", refresh=True))
        print(json.dumps(out))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, prefix], env={**os.environ, **gcs.env},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    root = prefix[len("gs://"):]
    # The core class, not the experimental one that waits 60 s per bucket on the emulator.
    assert out["class"] == "gcsfs.core.GCSFileSystem"
    assert out["ls"] == [root + "dir/a.bin", root + "dir/b.txt"]
    assert out["size"] == 5000
    assert out["read"] == "second"
    assert out["prefix_exists"] is True  # gcsfs: a prefix with objects under it is a directory
    assert out["after_rm"] == [root + "dir/b.txt"]


def test_beam_filesystems_create_open_match_rename_delete(gcs, prefix):
    from apache_beam.io.filesystems import FileSystems

    a, b = prefix + "dir/a.txt", prefix + "dir/b.txt"
    with FileSystems.create(a) as f:
        f.write(b"hello from beam")
    with FileSystems.open(a) as f:
        assert f.read() == b"hello from beam"
    assert FileSystems.exists(a)
    (match,) = FileSystems.match([prefix + "dir/*"])
    assert [(m.path, m.size_in_bytes) for m in match.metadata_list] == [(a, 15)]

    FileSystems.rename([a], [b])
    assert not FileSystems.exists(a)
    with FileSystems.open(b) as f:
        assert f.read() == b"hello from beam"

    FileSystems.delete([b])
    assert not FileSystems.exists(b)
    assert FileSystems.match([prefix + "dir/*"])[0].metadata_list == []


def test_beam_exists_is_false_for_a_prefix(gcs, prefix):
    """GCS has no folders: Beam's exists() asks for an object of exactly that name.

    So `FileSystems.exists("gs://b/dir")` is False even with objects under dir/ (gcsfs and
    tf.io.gfile say True). Code that asks "is there a dataset here" must look for a file
    (dataset_info.json) or match("dir/*"), never exists("dir").
    """
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(prefix + "dir/file.txt") as f:
        f.write(b"x")
    assert FileSystems.exists(prefix + "dir/file.txt")
    assert not FileSystems.exists(prefix + "dir")
    assert not FileSystems.exists(prefix + "dir/")
    assert len(FileSystems.match([prefix + "dir/*"])[0].metadata_list) == 1


def test_beam_pipeline_writes_and_reads_text_on_gcs(gcs, prefix):
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    lines = [f"line {i}" for i in range(20)]
    with beam.Pipeline() as p:
        _ = p | beam.Create(lines) | beam.io.WriteToText(prefix + "out/part", num_shards=2)
    with beam.Pipeline() as p:
        assert_that(p | beam.io.ReadFromText(prefix + "out/part-*"), equal_to(lines))


def test_tf_gfile_write_read_glob_delete(gcs, prefix):
    import tensorflow as tf

    payload = os.urandom(3 * 1024 * 1024 + 17)  # several reads of TensorFlow's GCS client
    with tf.io.gfile.GFile(prefix + "dir/a.bin", "wb") as f:
        f.write(payload)
    with tf.io.gfile.GFile(prefix + "dir/b.txt", "w") as f:
        f.write("text")
    with tf.io.gfile.GFile(prefix + "dir/a.bin", "rb") as f:
        assert f.read() == payload
    assert tf.io.gfile.stat(prefix + "dir/a.bin").length == len(payload)
    assert sorted(tf.io.gfile.glob(prefix + "dir/*")) == [prefix + "dir/a.bin", prefix + "dir/b.txt"]
    assert sorted(tf.io.gfile.listdir(prefix + "dir")) == ["a.bin", "b.txt"]
    assert tf.io.gfile.isdir(prefix + "dir")  # TensorFlow, like gcsfs, sees the prefix as a folder
    tf.io.gfile.remove(prefix + "dir/a.bin")
    assert not tf.io.gfile.exists(prefix + "dir/a.bin")
    assert tf.io.gfile.glob(prefix + "dir/*") == [prefix + "dir/b.txt"]


@pytest.mark.parametrize("compression", ["", "GZIP"])
def test_tfrecords_written_through_beam_are_read_by_tf_data(gcs, prefix, compression):
    import tensorflow as tf
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    from tfrecord_schema.records import RecordWriter

    # The dataset job's way: Beam's filesystem layer and the project's framing (no TensorFlow).
    payloads = [bytes([i]) * (i * 997 + 1) for i in range(30)]
    path = prefix + "shard-00000-of-00001.tfrecord"
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        with RecordWriter(f, compression) as writer:
            for p in payloads:
                writer.write(p)
    # The trainer's way: tf.data over TensorFlow's own GCS client.
    dataset = tf.data.TFRecordDataset([path], compression_type=compression or None)
    assert [r.numpy() for r in dataset] == payloads


def test_data_written_by_tf_is_read_by_beam(gcs, prefix):
    import tensorflow as tf
    from apache_beam.io.filesystems import FileSystems

    with tf.io.gfile.GFile(prefix + "from_tf.json", "w") as f:
        json.dump({"ok": True}, f)
    with FileSystems.open(prefix + "from_tf.json") as f:
        assert json.loads(f.read()) == {"ok": True}


def test_proxy_refuses_every_other_host(gcs):
    # Refused by the proxy itself, so nothing is sent anywhere: the tests cannot reach the internet
    # through the proxy even by mistake.
    proxy = gcs.env["https_proxy"].removeprefix("http://")
    host, port = proxy.split(":")
    for method, target in (("CONNECT", "example.com:443"), ("GET", "http://example.com/"),
                           ("CONNECT", f"{GOOGLE_STORAGE_HOSTS[0]}:80")):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request(method, target, headers={"Host": target.split("/")[-1]})
            assert conn.getresponse().status == 403, (method, target)
        finally:
            conn.close()


def test_stop_kills_the_servers_and_environ_restores():
    psutil = pytest.importorskip("psutil")
    before = os.environ.get("STORAGE_EMULATOR_HOST")
    emulator = GcsEmulator("other-bucket", tensorflow=True)
    with emulator:
        pids = [emulator._emulator.pid, emulator._proxy.pid]
        assert all(psutil.pid_exists(pid) for pid in pids)
        assert emulator.create_bucket("second-bucket") == "gs://second-bucket/"
        with emulator.environ():
            assert os.environ["STORAGE_EMULATOR_HOST"] == emulator.endpoint
        assert os.environ.get("STORAGE_EMULATOR_HOST") == before
        workdir = emulator._workdir
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not workdir.exists()
    assert emulator.env == {}
