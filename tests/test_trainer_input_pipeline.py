"""The tf.data input pipeline reads back exactly what was written, and refuses what it cannot read."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tfrecord_schema.schema import METADATA_FEATURES, SCHEMA_VERSION, SPECTROGRAM_KEYS, SchemaVersionError, decode
from trainer import input_pipeline
from trainer.targets import model_input, model_target
from beam_pipelines.testing import SMALL_CONFIG, read_raw_records, write_dataset

SPLITS = {"train": 11, "valid": 5}


@pytest.fixture(scope="module", params=["", "GZIP"])
def dataset(request, tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("ds") / "dataset")
    info = write_dataset(directory, splits=SPLITS, num_shards=3, compression=request.param, seed=3)
    return directory, info


def _decoded_by_id(directory, info, split):
    decoded = [decode(r) for r in read_raw_records(info, split)]
    return {d["example_id"]: d for d in decoded}


def _collect(ds):
    batches = list(ds.as_numpy_iterator())
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}, [len(b["example_id"]) for b in batches]


def test_raw_batches_yield_exactly_the_written_examples(dataset):
    directory, info = dataset
    expected = _decoded_by_id(directory, info, "train")
    got, sizes = _collect(input_pipeline.raw_batches(directory, "train", batch_size=4))
    assert sizes == [4, 4, 3]
    ids = [i.decode() for i in got["example_id"]]
    assert len(ids) == SPLITS["train"] and set(ids) == {f"train-{i}" for i in range(SPLITS["train"])}
    for row, example_id in enumerate(ids):
        want = expected[example_id]
        for key in SPECTROGRAM_KEYS:
            assert got[key].dtype == np.float16 and got[key][row].shape == SMALL_CONFIG.shape
            np.testing.assert_array_equal(got[key][row], want[key])
        for key, kind in METADATA_FEATURES.items():
            value = got[key][row].decode() if kind == "bytes" else got[key][row].item()
            if kind == "float":
                assert value == pytest.approx(want[key], rel=1e-6)
            else:
                assert value == want[key]
    np.testing.assert_array_equal(got["schema_version"], SCHEMA_VERSION)
    np.testing.assert_array_equal(got["shape"], [list(SMALL_CONFIG.shape)] * len(ids))


@pytest.mark.parametrize("target", ["noise", "mask", "psa"])
def test_model_batches_match_numpy_targets(dataset, target):
    directory, info = dataset
    expected = _decoded_by_id(directory, info, "valid")
    # The same (deterministic, unshuffled) order in both pipelines: ids from one, tensors from the other.
    ids = [i.decode() for b in input_pipeline.raw_batches(directory, "valid", batch_size=2).as_numpy_iterator()
           for i in b["example_id"]]
    ds = input_pipeline.make_dataset(directory, "valid", batch_size=2, target=target, shuffle=False,
                                     deterministic=True)
    xs, ys = zip(*ds.as_numpy_iterator())
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert x.shape == y.shape == (SPLITS["valid"], *SMALL_CONFIG.shape, 1)
    assert x.dtype == y.dtype == np.float32
    for row, example_id in enumerate(ids):
        want = expected[example_id]
        np.testing.assert_allclose(x[row, ..., 0], model_input(want["noisy_magnitude"], SMALL_CONFIG),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            y[row, ..., 0], model_target(want["noisy_magnitude"], want["clean_magnitude"], target, SMALL_CONFIG,
                                         want["noisy_phase"], want["clean_phase"]),
            rtol=1e-5, atol=1e-5)
    assert y.min() >= -1.0 and y.max() <= 1.0 and np.ptp(y) > 0.1


def test_phase_sensitive_target_is_the_best_real_gain_with_the_noisy_phase():
    """Per bin, the psa gain minimises |g * noisy - clean| over real g in [0, 1] (the complex
    spectra), which the magnitude ratio does not where the phases differ."""
    rng = np.random.default_rng(0)
    shape = (3, 16, 9)
    clean = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    noisy = clean + rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    args = (np.abs(noisy), np.abs(clean), "psa", SMALL_CONFIG, np.angle(noisy), np.angle(clean))
    gain = (model_target(*args) + 1.0) / 2.0
    grid = np.linspace(0.0, 1.0, 2001)[:, None, None, None]
    best = grid[np.argmin(np.abs(grid * noisy - clean), axis=0), 0, 0, 0]
    np.testing.assert_allclose(gain, best, atol=1e-3)
    ratio = (model_target(np.abs(noisy), np.abs(clean), "mask", SMALL_CONFIG) + 1.0) / 2.0
    error = lambda g: np.sum(np.abs(g * noisy - clean) ** 2)  # noqa: E731
    assert error(gain) < 0.9 * error(ratio)
    # In phase, the two targets agree.
    same = model_target(np.abs(noisy), np.abs(clean), "psa", SMALL_CONFIG, np.angle(noisy), np.angle(noisy))
    np.testing.assert_allclose(same, model_target(np.abs(noisy), np.abs(clean), "mask", SMALL_CONFIG), atol=1e-6)
    with pytest.raises(ValueError, match="target 'psa' needs noisy_phase and clean_phase"):
        model_target(np.abs(noisy), np.abs(clean), "psa", SMALL_CONFIG)


def test_seeded_shuffle_covers_every_example_once_and_repeats(dataset):
    directory, _ = dataset

    def order(seed):
        ds = input_pipeline.raw_batches(directory, "train", batch_size=3, shuffle=True, shuffle_buffer=64,
                                        seed=seed, deterministic=True)
        return [i.decode() for b in ds.as_numpy_iterator() for i in b["example_id"]]

    first = order(7)
    assert sorted(first) == sorted(f"train-{i}" for i in range(SPLITS["train"]))
    assert order(7) == first
    assert order(8) != first


def test_training_dataset_repeats_with_static_batches(dataset):
    directory, info = dataset
    ds = input_pipeline.make_dataset(directory, "train", batch_size=4, shuffle=True, seed=1, repeat=True,
                                     drop_remainder=True)
    assert ds.element_spec[0].shape.as_list() == [4, *SMALL_CONFIG.shape, 1]
    batches = list(ds.take(6).as_numpy_iterator())  # 24 examples from 11: crosses epochs
    assert len(batches) == 6 and all(x.shape[0] == 4 for x, _ in batches)
    assert input_pipeline.steps_per_epoch(info, "train", 4, drop_remainder=True) == 2
    assert input_pipeline.steps_per_epoch(info, "train", 4, drop_remainder=False) == 3


def test_pipeline_is_pure_tensorflow_and_runs_under_the_tf_data_service(dataset):
    directory, _ = dataset
    ds = input_pipeline.make_dataset(directory, "valid", batch_size=5, shuffle=False)
    graph = tf.raw_ops.DatasetToGraphV2(input_dataset=ds._variant_tensor).numpy()
    assert b"PyFunc" not in graph and b"EagerPyFunc" not in graph
    dispatcher = tf.data.experimental.service.DispatchServer()
    worker = tf.data.experimental.service.WorkerServer(
        tf.data.experimental.service.WorkerConfig(dispatcher_address=dispatcher.target.split("://")[1]))
    served = ds.apply(tf.data.experimental.service.distribute(processing_mode="parallel_epochs",
                                                              service=dispatcher.target))
    (x, y), = list(served.as_numpy_iterator())
    assert x.shape == y.shape == (5, *SMALL_CONFIG.shape, 1)
    del worker


def test_dataset_info_with_another_schema_version_is_refused(tmp_path):
    directory = str(tmp_path / "ds")
    write_dataset(directory, splits={"train": 2}, info_schema_version=1)
    with pytest.raises(SchemaVersionError, match=r"schema version 1, but this toolkit reads versions 2, 3\. Rebuild"):
        input_pipeline.make_dataset(directory, "train", batch_size=2)


def test_records_with_another_schema_version_are_refused(tmp_path):
    directory = str(tmp_path / "ds")
    write_dataset(directory, splits={"train": 3}, record_schema_version=1)
    ds = input_pipeline.make_dataset(directory, "train", batch_size=2, shuffle=False)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"another TFRecord schema version; this toolkit reads schema versions 2, 3"):
        list(ds)


def test_records_of_schema_2_are_read(tmp_path):
    """Schema 3 added augmentation metadata only: a dataset written under schema 2 still trains."""
    directory = str(tmp_path / "ds")
    write_dataset(directory, splits={"train": 3}, record_schema_version=2, info_schema_version=2)
    x, y = next(iter(input_pipeline.make_dataset(directory, "train", batch_size=3, shuffle=False)))
    assert x.shape[0] == 3 and np.all(np.isfinite(x.numpy()))


def test_shards_that_disagree_with_dataset_info_are_refused(tmp_path):
    directory = str(tmp_path / "ds")
    write_dataset(directory, splits={"train": 3}, num_shards=1)
    path = os.path.join(directory, "dataset_info.json")
    info = json.load(open(path))
    info["splits"]["train"]["num_examples"] = 5
    json.dump(info, open(path, "w"))
    with pytest.raises(tf.errors.FailedPreconditionError, match="expected to contain 5 elements but contained only 3"):
        list(input_pipeline.raw_batches(directory, "train", batch_size=1))


def test_missing_or_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a dataset directory.*speech-enhance dataset"):
        input_pipeline.make_dataset(str(tmp_path), "train", batch_size=2)
    directory = str(tmp_path / "ds")
    write_dataset(directory, splits={"train": 3, "valid": 1})
    with pytest.raises(ValueError, match=r"has no split 'test'"):
        input_pipeline.make_dataset(directory, "test", batch_size=2)
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer. Received: batch_size=0"):
        input_pipeline.make_dataset(directory, "train", batch_size=0)
    with pytest.raises(ValueError, match=r"target must be one of .* Received: target='speech'"):
        input_pipeline.make_dataset(directory, "train", batch_size=2, target="speech")
    with pytest.raises(ValueError, match=r"fewer than one batch of batch_size=4"):
        input_pipeline.make_dataset(directory, "valid", batch_size=4, drop_remainder=True)
    os.remove(os.path.join(directory, "train.tfrecord-00001-of-00002"))
    with pytest.raises(FileNotFoundError, match=r"1 shard\(s\) listed in dataset_info.json are missing"):
        input_pipeline.make_dataset(directory, "train", batch_size=2)
