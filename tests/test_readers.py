"""The shard indexes and the readers without TensorFlow (readers/): PyTorch map-style and streaming
datasets and the grain source yield exactly the records, features and targets tf.data yields."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch readers need torch: pip install torch==2.13.0 "
                            "(`make test` installs it)")

import speech_enhance  # noqa: E402
from beam_pipelines.inspect_dataset import inspect_dataset  # noqa: E402
from beam_pipelines.testing import read_raw_records, write_dataset  # noqa: E402
from readers.grain_source import RecordSource  # noqa: E402
from readers.torch_data import RecordDataset, StreamDataset  # noqa: E402
from tfrecord_schema import paths, shard_index, shard_writer  # noqa: E402
from tfrecord_schema.dataset import Dataset  # noqa: E402
from tfrecord_schema.dataset_info import DatasetInfo  # noqa: E402
from tfrecord_schema.schema import METADATA_FEATURES, SPECTROGRAM_KEYS, decode  # noqa: E402
from trainer.input_pipeline import make_dataset, raw_batches  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_TRAIN = 23


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("readers") / "ds")
    write_dataset(path, splits={"train": N_TRAIN, "valid": 8}, num_shards=3)
    return path


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@pytest.fixture(scope="module")
def tf_records(dataset):
    """{example_id: {feature: value}} and {example_id: (x, y, w)} as the tf.data pipeline yields them."""
    raw = {}
    order = []
    for batch in raw_batches(dataset, "train", batch_size=8).as_numpy_iterator():
        for b in range(len(batch["example_id"])):
            example_id = _text(batch["example_id"][b])
            order.append(example_id)
            raw[example_id] = {k: batch[k][b] for k in (*SPECTROGRAM_KEYS, *METADATA_FEATURES)}
    model = {}
    ds = make_dataset(dataset, "train", batch_size=8, shuffle=False, deterministic=True, loss_weighting="magnitude")
    examples = [tuple(a[b] for a in batch) for batch in ds.as_numpy_iterator() for b in range(len(batch[0]))]
    for example_id, example in zip(order, examples):
        model[example_id] = example
    assert len(raw) == N_TRAIN
    return raw, model


def _check_raw(example, expected):
    for key in SPECTROGRAM_KEYS:
        np.testing.assert_array_equal(np.asarray(example[key]), expected[key])
    for key, kind in METADATA_FEATURES.items():
        if kind == "bytes":
            assert _text(example[key]) == _text(expected[key]), key
        elif kind == "float":
            assert np.float32(example[key]) == np.float32(expected[key]), key
        else:
            assert int(example[key]) == int(expected[key]), key


def _unbatch(batch):
    n = len(batch["example_id"])
    return [{k: v[b] for k, v in batch.items()} for b in range(n)]


def test_map_dataset_matches_tf_data(dataset, tf_records):
    raw, model = tf_records
    records = RecordDataset(dataset, "train", raw=True)
    features = RecordDataset(dataset, "train", loss_weighting="magnitude")
    assert len(records) == N_TRAIN
    seen = []
    for i in range(len(records)):
        example = records[i]
        example_id = example["example_id"]
        seen.append(example_id)
        _check_raw(example, raw[example_id])
        x, y, w = features[i]
        assert x.shape == (32, 32, 1) and x.dtype == torch.float32 and y.shape == (32, 32, 1)
        tx, ty, tw = model[example_id]
        np.testing.assert_allclose(x.numpy(), tx, atol=1e-5)
        np.testing.assert_allclose(y.numpy(), ty, atol=1e-5)
        np.testing.assert_allclose(w.numpy(), tw, rtol=1e-5, atol=1e-6)
    assert sorted(seen) == sorted(raw)
    assert not np.allclose(features[0][1].numpy(), features[1][1].numpy())  # targets differ per example
    with pytest.raises(IndexError, match="out of range"):
        records[N_TRAIN]


def test_map_dataset_shuffles_globally_across_two_workers(dataset, tf_records):
    raw, _ = tf_records
    loader = torch.utils.data.DataLoader(RecordDataset(dataset, "train", raw=True), batch_size=5, shuffle=True,
                                         num_workers=2, generator=torch.Generator().manual_seed(0))
    ids = []
    for batch in loader:
        assert batch["noisy_magnitude"].shape[1:] == (32, 32)
        for example in _unbatch(batch):
            ids.append(example["example_id"])
            _check_raw(example, raw[example["example_id"]])
    assert sorted(ids) == sorted(raw) and len(ids) == N_TRAIN
    unshuffled = [RecordDataset(dataset, "train", raw=True)[i]["example_id"] for i in range(N_TRAIN)]
    assert ids != unshuffled


def _stream_ids(dataset, raw, *, shuffle, epoch=0, batch_size=4):
    """Ids read by 2 simulated ranks x 2 DataLoader workers, each checked against tf.data's record."""
    per_rank = []
    for rank in range(2):
        stream = StreamDataset(dataset, "train", batch_size=batch_size, shuffle=shuffle, shuffle_buffer=6, seed=3,
                               epoch=epoch, raw=True, rank=rank, world_size=2, run_length=3)
        ids = []
        for batch in torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2):
            for example in _unbatch(batch):
                _check_raw(example, raw[example["example_id"]])
                ids.append(example["example_id"])
        per_rank.append(ids)
    return per_rank


@pytest.mark.parametrize("shuffle", [False, True])
def test_stream_dataset_shares_records_across_ranks_and_workers(dataset, tf_records, shuffle):
    raw, _ = tf_records
    per_rank = _stream_ids(dataset, raw, shuffle=shuffle)
    everything = per_rank[0] + per_rank[1]
    assert sorted(everything) == sorted(raw)  # none lost, none repeated
    assert all(per_rank) and not set(per_rank[0]) & set(per_rank[1])
    if shuffle:
        assert _stream_ids(dataset, raw, shuffle=True) == per_rank  # same seed and epoch: same order
        assert _stream_ids(dataset, raw, shuffle=True, epoch=1) != per_rank


def test_stream_dataset_shuffles_positions_in_the_order_of_the_records(dataset, tf_records):
    """Local shards: the shuffle buffer holds record positions and reads each record as it leaves;
    the order is that of the buffer of records (`stream_records`, used for gs:// shards)."""
    from readers.store import IndexedSplit, stream_records, stream_runs

    raw, _ = tf_records
    split = IndexedSplit(dataset, "train")
    for consumer in range(2):
        runs = stream_runs(split, consumer, 2, epoch=1, seed=5, shuffle=True, run_length=3)
        rng = np.random.default_rng([5, 1, consumer])
        records = stream_records(split, runs, shuffle=True, shuffle_buffer=6, rng=rng)
        expected = [decode(r)["example_id"] for r in records]
        for batch_size, threads in ((None, 0), (4, 0), (4, 2)):
            stream = StreamDataset(dataset, "train", batch_size=batch_size, shuffle=True, shuffle_buffer=6, seed=5,
                                   epoch=1, raw=True, rank=consumer, world_size=2, run_length=3, threads=threads)
            examples = list(stream) if batch_size is None else [e for b in stream for e in _unbatch(b)]
            assert [e["example_id"] for e in examples] == expected
            for example in examples:
                _check_raw(example, raw[example["example_id"]])
    assert len(expected) < N_TRAIN and expected != sorted(expected)


def test_stream_dataset_batches_are_the_tf_data_model_inputs(dataset, tf_records):
    _, model = tf_records
    ids = [RecordDataset(dataset, "train", raw=True)[i]["example_id"] for i in range(N_TRAIN)]
    stream = StreamDataset(dataset, "train", batch_size=5, target="noise", loss_weighting="magnitude")
    batches = list(stream)
    assert [len(b[0]) for b in batches] == [5, 5, 5, 5, 3]
    xs, ys, ws = (torch.cat([b[i] for b in batches]).numpy() for i in range(3))
    for example_id, x, y, w in zip(ids, xs, ys, ws):  # unshuffled, one consumer: record order
        tx, ty, tw = model[example_id]
        np.testing.assert_allclose(x, tx, atol=1e-5)
        np.testing.assert_allclose(y, ty, atol=1e-5)
        np.testing.assert_allclose(w, tw, rtol=1e-5, atol=1e-6)
    threaded = list(StreamDataset(dataset, "train", batch_size=5, loss_weighting="magnitude", threads=2))
    assert all(torch.equal(a, b) for one, two in zip(batches, threaded) for a, b in zip(one, two))
    assert len(threaded) == len(batches)
    records = RecordDataset(dataset, "train", raw=True, threads=2)
    picked = [17, 3, 9, 0, 22, 5, 11]
    assert [e["example_id"] for e in records.__getitems__(picked)] == [ids[i] for i in picked]
    repeated = iter(StreamDataset(dataset, "train", batch_size=4, shuffle=True, repeat=True, drop_remainder=True))
    assert all(next(repeated)[0].shape == (4, 32, 32, 1) for _ in range(12))  # past the end of one pass


def test_readers_make_the_phase_sensitive_target_as_tf_data_does(dataset):
    """Target "psa" needs the phases: the readers decode them for it and give tf.data's targets."""
    order = [_text(i) for b in raw_batches(dataset, "train", batch_size=5).as_numpy_iterator() for i in b["example_id"]]
    tf_batches = make_dataset(dataset, "train", batch_size=5, target="psa", shuffle=False, deterministic=True)
    by_id = dict(zip(order, np.concatenate([y for _, y in tf_batches.as_numpy_iterator()])))
    ids = [RecordDataset(dataset, "train", raw=True)[i]["example_id"] for i in range(N_TRAIN)]
    want = np.stack([by_id[i] for i in ids])  # in record order, the readers' unshuffled order
    stream = np.concatenate([y.numpy() for _, y in StreamDataset(dataset, "train", batch_size=5, target="psa")])
    np.testing.assert_allclose(stream, want, atol=1e-5)
    magnitude_only = np.concatenate([y.numpy() for _, y in StreamDataset(dataset, "train", batch_size=5,
                                                                            target="mask")])
    assert np.abs(magnitude_only - want).max() > 0.1  # the phases change the target
    source = RecordSource(dataset, "train", target="psa")
    np.testing.assert_allclose(np.stack([source[i][1] for i in range(N_TRAIN)]), want, atol=1e-5)


def test_grain_source_matches_tf_data(dataset, tf_records):
    raw, model = tf_records
    source = RecordSource(dataset, "train", output="raw")
    assert len(source) == N_TRAIN and "RecordSource(" in repr(source)
    for i in range(len(source)):
        _check_raw(source[i], raw[source[i]["example_id"]])
    features = RecordSource(dataset, "train")
    x, y = features[0]
    tx, ty, _ = model[source[0]["example_id"]]
    np.testing.assert_allclose(x, tx, atol=1e-5)
    np.testing.assert_allclose(y, ty, atol=1e-5)
    grain = pytest.importorskip("grain", reason="grain is not installed (pip install grain)")
    assert isinstance(source, grain.sources.RandomAccessDataSource)
    shuffled = [e["example_id"] for e in grain.MapDataset.source(source).shuffle(seed=0)]
    assert sorted(shuffled) == sorted(raw) and shuffled != [source[i]["example_id"] for i in range(N_TRAIN)]


def test_verify_checks_the_index_and_readers_detect_a_corrupt_one(tmp_path, capsys):
    path = str(tmp_path / "ds")
    shard = write_dataset(path, splits={"train": 6}, num_shards=2).info.splits["train"]["shards"][1]
    assert shard["index"] == shard["file"] + ".index" and shard["index_bytes"] == 16 * shard["num_examples"]
    index = np.fromfile(os.path.join(path, shard["index"]), "<u8").reshape(-1, 2)
    assert index[0, 0] == 0 and index[-1].sum() == shard["num_bytes"]
    assert inspect_dataset(path, examples=0, verify=True)["problems"] == []

    index[[0, 1]] = index[[1, 0]]  # two records swapped: same size, wrong offsets
    index.tofile(os.path.join(path, shard["index"]))
    problems = inspect_dataset(path, examples=0, verify=True)["problems"]
    assert len(problems) == 1 and "do not match the records read" in problems[0] and shard["index"] in problems[0]
    with pytest.raises(ValueError, match="offsets do not follow one another.*speech-enhance index --overwrite"):
        RecordDataset(path, "train")
    index[[0, 1]] = index[[1, 0]]
    index[0, 1] += 4  # a boundary moved: the entries still tile the shard, but miss the records
    index[1, 0] += 4
    index[1, 1] -= 4
    index.tofile(os.path.join(path, shard["index"]))
    assert "do not match the records read" in inspect_dataset(path, examples=0, verify=True)["problems"][0]
    records = RecordDataset(path, "train")
    records[2]  # the first shard is intact
    with pytest.raises(ValueError, match="index or the shard is damaged"):
        records[3]  # the second shard's first record

    with open(os.path.join(path, shard["index"]), "ab") as f:
        f.write(b"\0" * 16)  # one entry too many
    problems = inspect_dataset(path, examples=0, verify=True)["problems"]
    assert len(problems) == 1 and "dataset_info.json says 48" in problems[0]
    with pytest.raises(ValueError, match="speech-enhance index"):
        RecordDataset(path, "train")
    capsys.readouterr()


def test_index_command_indexes_an_unindexed_dataset(tmp_path, capsys):
    path = str(tmp_path / "old")
    write_dataset(path, splits={"train": 7, "valid": 3}, num_shards=2, index=False)
    before = DatasetInfo.read(path)
    assert not any("index" in s for e in before.splits.values() for s in e["shards"])
    with pytest.raises(ValueError, match="speech-enhance index"):
        RecordDataset(path, "train")
    assert speech_enhance.main(["index", path]) == 0
    assert "indexed" in capsys.readouterr().out
    after = DatasetInfo.read(path)
    assert all(s["index"] == s["file"] + ".index" for e in after.splits.values() for s in e["shards"])
    assert after.to_dict() | {"splits": None} == before.to_dict() | {"splits": None}  # nothing else changed
    assert inspect_dataset(path, examples=0, verify=True)["problems"] == []
    ids = sorted(RecordDataset(path, "train", raw=True)[i]["example_id"] for i in range(7))
    assert ids == sorted(f"train-{i}" for i in range(7))
    # A damaged index is rewritten; a GZIP dataset gets none.
    with open(os.path.join(path, after.splits["train"]["shards"][0]["index"]), "wb") as f:
        f.write(b"\1" * 16)
    assert speech_enhance.main(["index", path]) == 0
    assert inspect_dataset(path, examples=0, verify=True)["problems"] == []
    gzip_path = str(tmp_path / "gz")
    write_dataset(gzip_path, splits={"train": 3}, compression="GZIP")
    assert not any("index" in s for s in DatasetInfo.read(gzip_path).splits["train"]["shards"])
    assert speech_enhance.main(["index", gzip_path]) == 2
    assert "GZIP-compressed" in capsys.readouterr().err
    with pytest.raises(ValueError, match="GZIP-compressed"):
        shard_writer.index_dataset(gzip_path)


def test_dataset_job_writes_the_indexes(tmp_path):
    pytest.importorskip("apache_beam")
    from beam_pipelines.launcher import run_dataset
    from beam_pipelines.options import DatasetOptions
    from dataset_fixtures import make_corpus

    voice_dir, noise_dir = make_corpus(str(tmp_path / "corpus"), speakers=4, utterances=1, noises_per_kind=1)
    out = str(tmp_path / "ds")
    built = run_dataset(DatasetOptions(voice_dir=voice_dir, noise_dir=noise_dir, output=out, num_examples=12,
                                       max_shard_bytes=int(0.4 * 2**20), chunk_size=2), workers=1)
    shards = [shard for split in built.splits.values() for shard in split.shards]
    assert len(shards) > 3 and all(os.path.isfile(built.index_path(shard)) for shard in shards)
    assert all(shard.index_bytes == 16 * shard.num_examples for shard in shards)
    assert not [f for f in os.listdir(out) if paths.final_name(f)]
    assert inspect_dataset(out, examples=0, verify=True)["problems"] == []
    records = RecordDataset(out, "train", raw=True)
    expected = [decode(r)["example_id"] for r in read_raw_records(Dataset.open(out), "train")]
    assert [records[i]["example_id"] for i in range(len(records))] == expected and len(set(expected)) > 3


def test_readers_make_the_waveform_losses_spectra_as_tf_data_does(dataset):
    """With a waveform loss the readers decode both phases and give tf.data's packed spectra."""
    from trainer.input_pipeline import WAVEFORM_KEYS, waveform_model_io

    order = [_text(i) for b in raw_batches(dataset, "train", batch_size=5).as_numpy_iterator() for i in b["example_id"]]
    opened = Dataset.open(dataset)
    tf_batches = make_dataset(opened, "train", batch_size=5, shuffle=False, deterministic=True,
                              keys=WAVEFORM_KEYS, model_io=waveform_model_io(opened.config))
    by_id = dict(zip(order, np.concatenate([y for _, y in tf_batches.as_numpy_iterator()])))
    ids = [RecordDataset(dataset, "train", raw=True)[i]["example_id"] for i in range(N_TRAIN)]
    want = np.stack([by_id[i] for i in ids])
    assert want.shape[-1] == 4
    stream = np.concatenate([y.numpy() for _, y in StreamDataset(dataset, "train", batch_size=5, target="mask",
                                                                   loss="si-sdr")])
    np.testing.assert_allclose(stream, want, atol=1e-5 * np.abs(want).max())
    records = RecordDataset(dataset, "train", target="mask", loss="snr")
    np.testing.assert_allclose(np.stack([records[i][1].numpy() for i in range(N_TRAIN)]), want,
                               atol=1e-5 * np.abs(want).max())
    source = RecordSource(dataset, "train", target="mask", loss="snr")
    np.testing.assert_allclose(np.stack([source[i][1] for i in range(N_TRAIN)]), want, atol=1e-5 * np.abs(want).max())
    with pytest.raises(ValueError, match=r"loss must be one of \(.*'si-sdr\+huber'\). Received: loss='l2'"):
        StreamDataset(dataset, "train", loss="l2")


def test_readers_make_the_complex_masks_input_as_tf_data_does(dataset):
    """For target "cmask" the model input holds the noisy phase too (three channels)."""
    from trainer.input_pipeline import WAVEFORM_KEYS, waveform_model_io

    order = [_text(i) for b in raw_batches(dataset, "train", batch_size=5).as_numpy_iterator() for i in b["example_id"]]
    opened = Dataset.open(dataset)
    tf_batches = make_dataset(opened, "train", batch_size=5, shuffle=False, deterministic=True,
                              keys=WAVEFORM_KEYS, model_io=waveform_model_io(opened.config, "cmask"))
    by_id = dict(zip(order, np.concatenate([x for x, _ in tf_batches.as_numpy_iterator()])))
    ids = [RecordDataset(dataset, "train", raw=True)[i]["example_id"] for i in range(N_TRAIN)]
    want = np.stack([by_id[i] for i in ids])
    assert want.shape[-1] == 3
    records = RecordDataset(dataset, "train", target="cmask", loss="si-sdr")
    np.testing.assert_allclose(np.stack([records[i][0].numpy() for i in range(N_TRAIN)]), want, atol=1e-5)


def test_train_on_the_torch_backend_with_the_si_sdr_loss(dataset, tmp_path):
    model_dir = str(tmp_path / "model")
    command = [sys.executable, "-m", "speech_enhance", "train", "--dataset", dataset, "--model-dir", model_dir,
               "--backend", "torch", "--base-filters", "4", "--depth", "2", "--batch-size", "4",
               "--steps-per-epoch", "8", "--validation-steps", "2", "--epochs", "2", "--learning-rate", "0.003",
               "--lr-schedule", "constant", "--target", "mask", "--loss", "si-sdr"]
    env = {**os.environ, "KERAS_BACKEND": "torch", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    import csv

    rows = list(csv.DictReader(open(os.path.join(model_dir, "training", "history.csv"))))
    # The loss is the negative SI-SDR in dB; the SNR is logged beside it.
    assert len(rows) == 2 and all(np.isfinite(float(r["val_snr"])) for r in rows)
    assert float(rows[1]["loss"]) < float(rows[0]["loss"]), rows


def test_train_on_the_torch_backend_from_the_pytorch_reader(dataset, tmp_path):
    model_dir = str(tmp_path / "model")
    command = [sys.executable, "-m", "speech_enhance", "train", "--dataset", dataset, "--model-dir", model_dir,
               "--backend", "torch", "--base-filters", "4", "--depth", "2", "--batch-size", "4",
               "--steps-per-epoch", "8", "--validation-steps", "2", "--epochs", "2", "--learning-rate", "0.003",
               "--lr-schedule", "constant", "--summary-json", str(tmp_path / "summary.json")]
    env = {**os.environ, "KERAS_BACKEND": "torch", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(open(tmp_path / "summary.json").read())
    assert summary["backend"] == "torch" and summary["epochs_run"] == 2
    with open(os.path.join(model_dir, "model.json")) as f:
        assert json.load(f)["training"]["backend"] == "torch"
    import csv

    rows = list(csv.DictReader(open(os.path.join(model_dir, "training", "history.csv"))))
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == 2 and losses[1] < losses[0], losses
    assert float(rows[-1]["val_loss"]) < 1.0


def test_readers_on_a_bucket(gcs, tmp_path, capsys):
    """gs:// shards through the path layer (open and seek), indexed there by `speech-enhance index`."""
    from tfrecord_schema import paths

    local = str(tmp_path / "old")
    write_dataset(local, splits={"train": 5}, num_shards=2, index=False)
    remote = gcs.url("readers/old")
    for name in os.listdir(local):
        paths.upload_atomic(os.path.join(local, name), paths.join(remote, name))
    assert speech_enhance.main(["index", remote]) == 0
    records = RecordDataset(remote, "train", raw=True)
    assert sorted(records[i]["example_id"] for i in range(5)) == [f"train-{i}" for i in range(5)]
    stream = list(StreamDataset(remote, "train", batch_size=2, raw=True))
    assert sorted(i for b in stream for i in b["example_id"]) == [f"train-{i}" for i in range(5)]


def test_torch_backend_training_loader_with_worker_processes(dataset, tf_records):
    """`speech-enhance train --backend torch`'s training loader as a CUDA machine gets it (DataLoader
    worker processes, pinned memory asked for, shuffle buffer shared out): tf.data's examples, each
    record at most once per epoch, epoch after epoch."""
    from trainer.config import TrainConfig
    from readers.torch_training import loader_settings, training_loaders

    gpu_box = loader_settings(True, 16)
    assert gpu_box["threads"] == 0 and gpu_box["loader"]["num_workers"] == 14 and gpu_box["loader"]["pin_memory"]
    assert gpu_box["loader"]["persistent_workers"] and loader_settings(True, 2)["loader"]["num_workers"] == 1
    assert loader_settings(False, 16) == {"threads": 4, "loader": {"num_workers": 0, "pin_memory": False}}

    _, model = tf_records
    expected = list(model.values())
    config = TrainConfig(batch_size=4, shuffle_buffer=8, loss_weighting="magnitude")
    loader, validation = training_loaders(Dataset.open(dataset), config, "unet", "valid", 1, accelerator=True)
    assert loader.num_workers >= 1 and loader.dataset.threads == 0
    assert loader.dataset.shuffle_buffer == 8 // loader.num_workers
    x, y, w = next(iter(validation))
    assert x.shape == (4, 32, 32, 1) and w.shape == (4, 32, 32)
    per_epoch = (N_TRAIN // loader.num_workers // 4) * loader.num_workers  # each worker drops its remainder
    epochs = [[], []]
    batches = iter(loader)
    for epoch in epochs:
        for _ in range(per_epoch):
            x, y, w = next(batches)
            assert x.shape == (4, 32, 32, 1) and x.dtype == torch.float32
            for b in range(4):
                match = [i for i, (tx, ty, tw) in enumerate(expected)
                         if np.allclose(x[b].numpy(), tx, atol=1e-5) and np.allclose(y[b].numpy(), ty, atol=1e-5)
                         and np.allclose(w[b].numpy(), tw, rtol=1e-5, atol=1e-6)]
                assert len(match) == 1
                epoch.append(match[0])
    assert all(len(set(e)) == len(e) == 4 * per_epoch for e in epochs)
    assert epochs[0] != epochs[1]  # reshuffled


def test_worker_batches_travel_in_reused_shared_memory_and_stay_intact(dataset):
    """DataLoader workers write batches into shared-memory blocks that return to them once the
    training process frees every tensor over one: batches kept stay intact while the stream goes on,
    kept beyond the pool's blocks they arrive as torch sends them, and every value is the one the
    in-process reader makes."""
    from readers import shared_memory

    def stream(**kw):
        return StreamDataset(dataset, "train", batch_size=3, shuffle=True, shuffle_buffer=5, seed=1, repeat=True,
                             loss_weighting="magnitude", **kw)

    def expected(steps):
        per_consumer = [iter(stream(rank=r, world_size=2)) for r in range(2)]
        return [next(per_consumer[i % 2]) for i in range(steps)]  # the DataLoader alternates its workers

    steps = 40  # 20 batches per worker: each of its blocks reused
    want = expected(steps)
    loader = iter(torch.utils.data.DataLoader(stream(), batch_size=None, num_workers=2, prefetch_factor=2))
    kept = next(loader)
    assert all(torch.equal(a, b) for a, b in zip(kept, want[0]))
    for step in range(1, steps):
        batch = next(loader)
        assert len(batch) == 3 and all(torch.equal(a, b) for a, b in zip(batch, want[step])), step
        del batch
    assert all(torch.equal(a, b) for a, b in zip(kept, want[0]))  # its block was not reused
    received = [blocks for _, _, blocks in shared_memory._RECEIVED.values()]
    assert received and all(1 <= len(blocks) <= shared_memory._POOL_BLOCKS for blocks in received)
    del loader

    # Every batch kept: past the pool's blocks, batches come in new shared memory.
    loader = torch.utils.data.DataLoader(stream(), batch_size=None, num_workers=2)
    kept = [batch for batch, _ in zip(loader, range(steps))]
    assert all(torch.equal(a, b) for one, two in zip(kept, want) for a, b in zip(one, two))


def test_index_refuses_swapped_or_extended_shards_by_name_and_readers_quote_the_real_size(tmp_path, capsys):
    path = str(tmp_path / "ds")
    dataset = write_dataset(path, splits={"train": 8}, num_shards=2)  # two shards of 4 records, sizes differ
    first, second = dataset.info.splits["train"]["shards"]
    a, b = os.path.join(path, first["file"]), os.path.join(path, second["file"])
    assert first["num_examples"] == second["num_examples"] and first["num_bytes"] != second["num_bytes"]
    os.rename(a, a + ".swap")
    os.rename(b, a)
    os.rename(a + ".swap", b)
    indexes = {s["index"]: open(os.path.join(path, s["index"]), "rb").read() for s in (first, second)}

    for overwrite in ([], ["--overwrite"]):  # `index` used to rewrite the indexes and report success
        assert speech_enhance.main(["index", *overwrite, path]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"speech-enhance index: error: {a}: {second['num_bytes']} bytes, dataset_info.json "
                              f"says {first['num_bytes']}: this is not the shard the dataset was built with"), err
        assert "restore the shard" in err and "--overwrite" not in err
        assert {n: open(os.path.join(path, n), "rb").read() for n in indexes} == indexes  # nothing rewritten

    # Indexes that match the swapped files (as `index` wrote them before): the readers name the shard
    # with its real size and do not advise `index --overwrite`, which cannot fix a swapped shard.
    for shard, file in ((first, a), (second, b)):
        with open(file, "rb") as f:
            shard_index.scan_index(f).tofile(os.path.join(path, shard["index"]))
    for reader in (RecordDataset, RecordSource):
        with pytest.raises(ValueError) as raised:
            reader(path, "train")
        message = str(raised.value)
        assert message.startswith(f"{a}: {second['num_bytes']} bytes, dataset_info.json says {first['num_bytes']}")
        assert "index --overwrite" not in message

    # Trailing garbage on an intact shard: the error names that shard.
    os.rename(a, a + ".swap")
    os.rename(b, a)
    os.rename(a + ".swap", b)
    with open(b, "ab") as f:
        f.write(b"garbage")
    assert speech_enhance.main(["index", "--overwrite", path]) == 2
    err = capsys.readouterr().err
    assert f"error: {b}: {second['num_bytes'] + 7} bytes, dataset_info.json says {second['num_bytes']}" in err
    # Without a recorded size (an older dataset_info.json) the record scan still names the shard.
    raw = json.load(open(os.path.join(path, "dataset_info.json")))
    for shard in raw["splits"]["train"]["shards"]:
        del shard["num_bytes"]
    with open(os.path.join(path, "dataset_info.json"), "w") as f:
        json.dump(raw, f)
    with pytest.raises(ValueError, match=rf"^{b}: truncated TFRecord header at byte {second['num_bytes']} "
                                         r"\(record 4\): the shard is damaged"):
        shard_writer.index_dataset(path, overwrite=True)


def _read_only_view(source, target):
    """`target`: a read-only bind mount of `source` (root only); False where mounting is not allowed."""
    os.makedirs(target)
    result = subprocess.run(["mount", "--bind", "-o", "ro", source, target], capture_output=True)
    return result.returncode == 0


def test_index_on_a_read_only_dataset_is_one_clear_line(tmp_path, capsys, monkeypatch):
    unindexed, indexed = str(tmp_path / "old"), str(tmp_path / "new")
    write_dataset(unindexed, splits={"train": 4}, num_shards=2, index=False)
    write_dataset(indexed, splits={"train": 4}, num_shards=2)
    views = {name: str(tmp_path / f"ro-{name}") for name in ("old", "new")}
    mounted = [name for name in views if _read_only_view(str(tmp_path / name), views[name])]
    try:
        if len(mounted) < 2:  # not root: the same error, injected where the index is written
            import errno as errno_module

            def read_only(path, data):
                raise OSError(errno_module.EROFS, os.strerror(errno_module.EROFS), path)

            monkeypatch.setattr(shard_writer.paths, "write_atomic", read_only)
            views = {"old": unindexed, "new": indexed}
        assert speech_enhance.main(["index", views["old"]]) == 2  # was a raw OSError traceback
        err = capsys.readouterr().err
        shard = os.path.join(views["old"], "train.tfrecord-00000-of-00002.index")
        assert err == (f"speech-enhance index: error: {shard}: cannot write (Read-only file system): `speech-enhance "
                       f"index` writes the SHARD.index files and dataset_info.json into the dataset folder "
                       f"{views['old']}. Copy the dataset to a writable place and index the copy, or read this one "
                       "without indexes (the tf.data pipeline of `train --backend tensorflow` or `jax` needs none).\n")
        # A dataset whose indexes are all there and match needs no write: read-only is no obstacle.
        assert speech_enhance.main(["index", views["new"]]) == 0
        assert "indexed" in capsys.readouterr().out
    finally:
        for name in mounted:
            subprocess.run(["umount", views[name]], check=True)


def test_readers_take_integer_indexes_only_as_python_sequences_do(dataset):
    records, source = RecordDataset(dataset, "train", raw=True), RecordSource(dataset, "train", output="raw")
    ids = [records[i]["example_id"] for i in range(N_TRAIN)]
    for reader in (records, source):
        # 1.5 used to be read as record 1 (int() truncated it)
        with pytest.raises(TypeError, match=r"record indices must be integers, not float. Received: 1\.5 "
                                            rf"\(the 'train' split holds {N_TRAIN} records\)"):
            reader[1.5]
        with pytest.raises(TypeError, match=r"not float64. Received: np.float64\(2.0\)"):
            reader[np.float64(2.0)]
        with pytest.raises(IndexError, match=rf"record index out of range: {N_TRAIN} "):
            reader[N_TRAIN]
        # integers of any kind; negative ones count from the end, as in a list
        assert [reader[k]["example_id"] for k in (np.int64(3), torch.tensor(4), -1, -N_TRAIN)] == [
            ids[3], ids[4], ids[-1], ids[0]]
    with pytest.raises(TypeError, match=r"Received: 1\.5"):
        records[[0, 1.5]]
    with pytest.raises(TypeError, match=r"Received: 0\.5"):
        records.__getitems__([0.5])
