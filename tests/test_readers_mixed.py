"""Reading a source store mixed on the fly from PyTorch and grain (readers.mixed, readers.torch_mixed,
readers.torch_training.mixed_loaders): items are `SourceMixer`'s examples, and for a store of the
same 16-bit files the static dataset's records, model inputs and targets alike; worker processes,
threads and resumed runs read the same batches."""

from __future__ import annotations

import concurrent.futures
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch readers need torch: pip install torch==2.13.0 "
                            "(`make test` installs it)")

from beam_pipelines.launcher import run_dataset  # noqa: E402
from beam_pipelines.options import DatasetOptions  # noqa: E402
from mixing.on_the_fly import VALIDATION_SEED, EpochPlan, SourceMixer  # noqa: E402
from mixing.options import AugmentOptions, MixOptions  # noqa: E402
from readers.grain_source import RecordSource  # noqa: E402
from readers.mixed import MixedSource, validation_mix  # noqa: E402
from readers.torch_mixed import MixedDataset, StepSampler  # noqa: E402
from readers.torch_training import mixed_loaders  # noqa: E402
from source_stores import static_sources, write_corpus, write_source_store  # noqa: E402
from tfrecord_schema.config import SpectrogramConfig  # noqa: E402
from tfrecord_schema.schema import SPECTROGRAM_KEYS, decode  # noqa: E402

RATE = 8000
MIX = MixOptions(seed=3)
AUGMENT = AugmentOptions(reverb_probability=0.5, room_count=4, babble_probability=0.3, babble_talkers=(1, 2),
                         speed_probability=0.3, noise_tilt_db=3.0)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(static dataset, source store of the same files), built with augmentation."""
    root = str(tmp_path_factory.mktemp("mixed"))
    voice_dir, noise_dir = write_corpus(root, RATE)
    static = run_dataset(DatasetOptions(voice_dir=voice_dir, noise_dir=noise_dir, output=f"{root}/static",
                                        num_examples=40, mix=MIX, augment=AUGMENT), workers=1)
    return static, write_source_store(f"{root}/sources", RATE, static_sources(static, voice_dir, noise_dir))


def _source(store, config, **kwargs):
    kwargs.setdefault("length", 64)
    return MixedSource(store, "train", MIX, config, augment=AUGMENT, **kwargs)


def test_items_are_the_mixers_examples(stores):
    static, store = stores
    config = static.config
    mixer = SourceMixer.for_config(store, "train", MIX, config, augment=AUGMENT)
    expected = mixer.spectrograms([3, 9], config, metadata=True)
    for output in (MixedSource, MixedDataset):
        data = output(store, "train", MIX, config, length=20, augment=AUGMENT, output="spectrograms")
        for row, i in enumerate((3, 9)):
            item = data[i]
            for key in SPECTROGRAM_KEYS:
                assert np.array_equal(np.asarray(item[key]), expected[key][row]), (output, key)
            assert {k: item[k] for k in expected["metadata"][row]} == expected["metadata"][row]
    for keys in (("clean_phase",), ("noisy_magnitude", "clean_magnitude")):  # the others are not computed
        some = mixer.spectrograms([3, 9], config, keys=keys)
        assert list(some) == list(keys) and all(np.array_equal(some[k], expected[k]) for k in keys)
    with pytest.raises(ValueError, match=r"unknown keys \['noisy'\]"):
        mixer.spectrograms([3], config, keys=("noisy",))
    waves = _source(store, config, output="waveforms")[5]
    assert np.array_equal(waves["mixture"], mixer.waveforms([5])["mixture"][0])


def test_items_equal_the_static_records_model_inputs(stores):
    static, store = stores
    config = static.config
    records = RecordSource(static, "train", loss_weighting="magnitude")
    raw = RecordSource(static, "train", output="raw")
    ids = [int(raw[k]["example_id"].split("-")[1]) for k in range(len(raw))]
    mixed = MixedSource(store, "train", MIX, config, length=max(ids) + 1, augment=AUGMENT, loss_weighting="magnitude")
    dataset = MixedDataset(store, "train", MIX, config, length=max(ids) + 1, augment=AUGMENT,
                           loss_weighting="magnitude")
    batch = dataset[ids]  # a list of indices: the batch, transformed at once
    for k, index in enumerate(ids):
        for a, b, c in zip(records[k], mixed[index], batch):
            assert a.dtype == b.dtype == np.float32
            assert np.array_equal(a, b) and np.array_equal(a, c[k].numpy())
    record = decode(next(iter(static.records("train"))))
    got = MixedSource(store, "train", MIX, config, length=max(ids) + 1, augment=AUGMENT, output="spectrograms")
    assert np.array_equal(got[ids[0]]["noisy_phase"], record["noisy_phase"])


def test_threads_and_pickles_give_the_same_items(stores):
    static, store = stores
    source = _source(store, static.config)
    alone = [source[i] for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(source.__getitem__, range(16)))
    copied = pickle.loads(pickle.dumps(source))
    for a, b, c in zip(alone, threaded, (copied[i] for i in range(16))):
        assert all(np.array_equal(x, y) and np.array_equal(x, z) for x, y, z in zip(a, b, c))
    assert len(source) == 64 and np.array_equal(source[-1][0], source[63][0])
    with pytest.raises(IndexError, match="out of range: 64"):
        source[64]
    with pytest.raises(TypeError, match="must be integers"):
        source[1.5]


def test_bad_arguments_are_named(stores):
    static, store = stores
    with pytest.raises(ValueError, match="output must be one of"):
        _source(store, static.config, output="bytes")
    with pytest.raises(ValueError, match="length must be"):
        _source(store, static.config, length=-1)
    with pytest.raises(ValueError, match="16000 Hz but the source store"):
        _source(store, SpectrogramConfig.for_sample_rate(16000))
    with pytest.raises(TypeError, match="store must be an open SourceStore"):
        MixedSource(static, "train", MIX, static.config, length=1)


def _batches(loader):
    return [tuple(t.numpy().copy() for t in batch) for batch in loader]


def test_workers_and_resumed_runs_read_the_same_steps(stores):
    static, store = stores
    config, batch = static.config, 4
    data = MixedDataset(store, "train", MIX, config, length=6 * batch, augment=AUGMENT)
    plan = EpochPlan(steps_per_epoch=3, batch_size=batch)
    in_process = _batches(torch.utils.data.DataLoader(data, sampler=StepSampler(plan, 0, 6), batch_size=None))
    workers = _batches(torch.utils.data.DataLoader(data, sampler=StepSampler(plan, 0, 6), batch_size=None,
                                                   num_workers=2))
    resumed = _batches(torch.utils.data.DataLoader(data, sampler=StepSampler(plan, 4, 2), batch_size=None,
                                                   num_workers=2))
    assert len(in_process) == len(workers) == 6 and len(resumed) == 2
    for a, b in zip(in_process, workers):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    for a, b in zip(in_process[4:], resumed):
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    step_5 = MixedSource(store, "train", MIX, config, length=6 * batch, augment=AUGMENT).batch(plan.batch_indices(5))
    assert np.array_equal(in_process[5][0], step_5[0])
    assert not np.array_equal(in_process[4][0], in_process[5][0])


def test_mixed_loaders(stores):
    static, store = stores
    config, batch = static.config, 4
    train, valid = mixed_loaders(store, config, MIX, AUGMENT, batch, 2, 3, 2, accelerator=False)
    steps = _batches(train)
    expected = MixedSource(store, "train", MIX, config, length=5 * batch, augment=AUGMENT)
    assert len(steps) == 3 and [s[0].shape for s in steps] == [(batch, *config.shape, 1)] * 3
    assert np.array_equal(steps[0][1], expected.batch(range(2 * batch, 3 * batch))[1])
    checks = _batches(valid)
    assert len(checks) == 2
    mix = validation_mix(MIX)
    assert mix.seed == VALIDATION_SEED
    first = MixedSource(store, "valid", mix, config, length=2 * batch, augment=AUGMENT).batch(range(batch))
    assert np.array_equal(checks[0][0], first[0])
    assert np.array_equal(_batches(valid)[1][1], checks[1][1])  # the same examples every epoch
    _, none = mixed_loaders(store, config, MIX, None, batch, 0, 1, None, accelerator=False)
    assert none is None


def test_grain_batches(stores):
    grain = pytest.importorskip("grain")
    static, store = stores
    source = _source(store, static.config, length=12)
    batches = list(grain.MapDataset.source(source).batch(4).to_iter_dataset(grain.ReadOptions(num_threads=2)))
    assert len(batches) == 3
    assert np.array_equal(batches[2][0], source.batch(range(8, 12))[0])


def test_training_loaders_mix_a_source_store(stores):
    """training_loaders hands a source store to mixed_loaders: the steps left from first_step."""
    from readers.torch_training import training_loaders
    from trainer.config import TrainConfig

    static, store = stores
    config = TrainConfig(batch_size=4, epochs=2, steps_per_epoch=3)
    with pytest.raises(ValueError, match="pass the model's spectrogram and the mixing options"):
        training_loaders(store, config, "unet", "valid", 1, accelerator=False)
    train, valid = training_loaders(store, config, "unet", "valid", 1, accelerator=False, spectrogram=static.config,
                                    mix=MIX, augment=AUGMENT, first_step=1)
    steps = _batches(train)
    assert len(steps) == 5  # steps 1 .. epochs x steps_per_epoch - 1
    expected = MixedSource(store, "train", MIX, static.config, length=6 * 4, augment=AUGMENT)
    assert np.array_equal(steps[-1][0], expected.batch(range(20, 24))[0])
    assert len(_batches(valid)) == 1
