"""`speech-enhance dataset --kind sources`: the source store the job writes on FnApiRunner (any worker
count) and DaskRunner, byte for byte; its info, segments, rejects; inspect, verify and index on it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile

import speech_enhance
from dataset_fixtures import add_bad_inputs, make_corpus, read_tree
from tfrecord_schema.dataset import Dataset
from tfrecord_schema.dataset_info import DatasetInfo
from tfrecord_schema.sources import SourceStore, open_store

RATE = 16000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Voices (16, 8 and 22.05 kHz; one stereo), noises, bad files of each kind and four room impulse
    responses."""
    root = tmp_path_factory.mktemp("corpus")
    voice_dir, noise_dir = make_corpus(str(root), speakers=6, utterances=1, noises_per_kind=2)
    bad = add_bad_inputs(voice_dir, noise_dir)
    rir_dir = os.path.join(str(root), "rirs")
    os.makedirs(rir_dir)
    rng = np.random.default_rng(3)
    t = np.arange(int(0.3 * RATE)) / RATE
    for i in range(4):
        response = 0.5 * rng.standard_normal(t.size) * np.exp(-t / (0.03 + 0.02 * i))
        soundfile.write(os.path.join(rir_dir, f"room{i}.wav"), response.astype(np.float32), RATE)
    soundfile.write(os.path.join(rir_dir, "dead.wav"), np.zeros(800, np.float32), RATE)
    bad["dead.wav"] = ("rir", "silent")
    return voice_dir, noise_dir, rir_dir, bad


def build(corpus, output, *extra) -> int:
    voice_dir, noise_dir, rir_dir, _ = corpus
    return speech_enhance.main(["dataset", "--kind", "sources", "--voice-dir", voice_dir, "--noise-dir", noise_dir,
                                "--rir-dir", rir_dir, "--output", str(output), "--shard-size-mb", "0.2", *extra])


@pytest.fixture(scope="module")
def store_dir(corpus, tmp_path_factory):
    output = tmp_path_factory.mktemp("one") / "store"
    assert build(corpus, output, "--workers", "1") == 0
    return output


def comparable(tree: dict[str, bytes]) -> dict[str, bytes]:
    """The files of a store, its info without the build's time and command line."""
    out = dict(tree)
    info = json.loads(out.pop("dataset_info.json"))
    del info["build_seconds"], info["arguments"]
    out["dataset_info.json"] = json.dumps(info, sort_keys=True).encode()
    return out


def test_the_store_holds_every_usable_file_once_with_its_split_and_counts(corpus, store_dir):
    voice_dir, noise_dir, rir_dir, bad = corpus
    store = open_store(store_dir)
    assert isinstance(store, SourceStore) and store.sample_rate == RATE
    splits = json.loads((store_dir / "splits.json").read_text())
    assert set(splits) == {"voices", "noises", "rirs"} and len(splits["rirs"]) == 5
    rejects = [json.loads(line) for line in (store_dir / "rejects.jsonl").read_text().splitlines()]
    assert {r["file"]: (r["role"], r["reason"]) for r in rejects} == bad
    assert store.info.rejects["count"] == len(bad)
    assert store.info.rejects["by_reason"]["rir:silent"] == 1
    seen = set()
    for split, roles in store.info.contents.items():
        segments = store.segments(split)
        assert len(segments) == store.num_examples(split) == sum(r["segments"] for r in roles.values())
        # Within a split, records run in (role, file) order across its shards.
        assert [(s.role, s.file) for s in segments] == sorted((s.role, s.file) for s in segments)
        for role, entry in roles.items():
            mine = store.segments(split, role)
            assert len(mine) == entry["segments"]
            assert entry["hours"] == pytest.approx(sum(s.seconds for s in mine) / 3600, abs=2e-6)
            assert set(entry["groups"]) == {s.group for s in mine}
        for s in segments:
            assert s.split == split == splits[s.role + "s"][s.file]
            assert s.utterance == os.path.splitext(os.path.basename(s.file))[0] and s.corpus == "" and s.offset == 0
            seen.add((s.role, s.file))
    listed = {(role[:-1], f) for role, files in splits.items() for f in files}
    assert seen == {(role, f) for role, f in listed if f not in bad}
    assert {s.group for s in store.segments("train", "rir")} == {"rir"}
    assert {s.group for s in store.segments("train", "voice")} <= {str(200 + i) for i in range(6)}
    for s in store.segments("train", "voice"):
        assert -40 < s.active_level_dbfs < 0


def test_16_bit_files_at_the_store_rate_are_stored_exactly(corpus, store_dir):
    voice_dir, noise_dir, rir_dir, _ = corpus
    store = SourceStore.open(store_dir)
    folders = {"voice": voice_dir, "noise": noise_dir, "rir": rir_dir}
    checked = 0
    for split in store.splits:
        for segment in store.segments(split):
            path = os.path.join(folders[segment.role], segment.file)
            info = soundfile.info(path)
            if info.samplerate != RATE or info.channels != 1 or info.subtype != "PCM_16":
                continue
            expected, _ = soundfile.read(path, dtype="int16")
            stored = store.audio(segment)
            assert stored.dtype == np.float32
            assert np.array_equal(np.rint(stored * 32768).astype(np.int16), expected), segment.file
            checked += 1
    assert checked >= 8  # 16 kHz voices, the wav noises and the room impulse responses


def test_rerun_with_two_workers_writes_the_same_bytes(corpus, store_dir, tmp_path):
    assert build(corpus, tmp_path / "store", "--workers", "2") == 0
    expected, got = comparable(read_tree(store_dir)), comparable(read_tree(tmp_path / "store"))
    assert sum(".tfrecord-" in name and not name.endswith(".index") for name in expected) > 3
    assert got == expected


def test_inspect_verify_and_index_take_a_source_store(corpus, store_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store_dir, copy)
    assert speech_enhance.main(["inspect", "--verify", str(copy)]) == 0
    out = capsys.readouterr().out
    assert f"source store {copy}: {RATE} Hz" in out and "healthy (read all" in out
    train = SourceStore.open(copy).info.contents["train"]
    assert f"train  voice  {train['voice']['segments']:>9}" in out
    assert not (copy / "inspect.png").exists()
    for index in copy.glob("*.index"):
        index.unlink()
    assert speech_enhance.main(["index", str(copy)]) == 0
    assert comparable(read_tree(copy)) == comparable(read_tree(store_dir))

    shard = sorted(copy.glob("train.tfrecord-*[0-9]"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one altered sample: the record's CRC no longer matches
    shard.write_bytes(bytes(data))
    assert speech_enhance.main(["inspect", str(copy)]) == 0  # the size check alone cannot see it
    assert speech_enhance.main(["inspect", "--verify", str(copy)]) == 1
    assert f"{shard}: " in capsys.readouterr().out
    shard.write_bytes(bytes(data[:-100]))
    assert speech_enhance.main(["inspect", str(copy)]) == 1
    assert "(truncated)" in capsys.readouterr().out


def test_a_spectrogram_reader_refuses_a_source_store_by_name(store_dir):
    for opening in (lambda: Dataset.open(store_dir), lambda: DatasetInfo.read(store_dir)):
        with pytest.raises(ValueError, match=r"describes a source store .*--kind sources.*`speech-enhance train` "
                                             r"mixes a source store"):
            opening()


def test_mixing_flags_are_refused_with_kind_sources(corpus, tmp_path, capsys):
    assert build(corpus, tmp_path / "store", "--num-examples", "10", "--snr-db", "0:5") == 2
    err = capsys.readouterr().err
    assert "--num-examples, --snr-db do not apply" in err and "mixed (and augmented) on the fly" in err
    assert build(corpus, tmp_path / "store", "--sample-rate", "22050") == 2
    assert "sample_rate is one of (8000, 16000, 24000, 32000, 48000) Hz" in capsys.readouterr().err
    assert not (tmp_path / "store").exists()


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("distributed", reason="DaskRunner needs dask.distributed: pip install -e '.[dask]'")
    import dask
    from distributed import LocalCluster

    # Spawned worker processes, as in test_dataset_dask.
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}), LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as c:
        yield c


def test_dask_build_equals_fnapi_build(cluster, corpus, store_dir, tmp_path):
    # The same folder name as the FnApiRunner build: the info names its store.
    assert build(corpus, tmp_path / "store", "--runner", "DaskRunner",
                 "--dask_client_address", cluster.scheduler_address) == 0
    assert comparable(read_tree(tmp_path / "store")) == comparable(read_tree(store_dir))


def test_a_store_built_from_a_bucket_into_a_bucket_equals_the_local_build(gcs, corpus, store_dir):
    from tfrecord_schema import paths

    remote = gcs.url("sources")
    names = ("voices", "noises", "rirs")
    for folder, name in zip(corpus[:3], names):
        for rel in paths.list_files(folder):
            paths.upload_atomic(os.path.join(folder, rel), paths.join(remote, name, rel))
    output = paths.join(remote, "out", "store")
    assert speech_enhance.main(["dataset", "--kind", "sources", *(
        arg for flag, name in zip(("--voice-dir", "--noise-dir", "--rir-dir"), names)
        for arg in (flag, paths.join(remote, name))), "--output", output, "--shard-size-mb", "0.2",
        "--workers", "2"]) == 0
    local = comparable(read_tree(store_dir))
    got = comparable({rel: paths.read_bytes(paths.join(output, rel)) for rel in paths.list_files(output)})
    # The same store, but for the input folders the info names.
    local_info, got_info = json.loads(local.pop("dataset_info.json")), json.loads(got.pop("dataset_info.json"))
    assert {k: v for k, v in got_info.items() if k != "sources"} == {k: v for k, v in local_info.items()
                                                                      if k != "sources"}
    # Reject messages name the file where it was read.
    rejects = [{k: v for k, v in json.loads(line).items() if k != "message"}
               for data in (got.pop("rejects.jsonl"), local.pop("rejects.jsonl")) for line in data.splitlines()]
    assert rejects[:len(rejects) // 2] == rejects[len(rejects) // 2:]
    assert got == local
    assert SourceStore.open(output).verify() == ([], sum(local_info["splits"][s]["num_examples"]
                                                        for s in local_info["splits"]))
