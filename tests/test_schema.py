import numpy as np
import pytest
import tensorflow as tf

from tfrecord_schema import schema as schema_lib
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.schema import SCHEMA_VERSION, SPECTROGRAM_KEYS, SchemaVersionError, decode, encode, tf_feature_spec


def make_example(config, rng):
    ex = {k: rng.uniform(0, 3, config.shape).astype(np.float32) for k in SPECTROGRAM_KEYS}
    ex.update(example_id="train-00000007", split="train", voice_file="19/198/19-198-0001.flac", voice_offset=12345,
              speaker_id="19", noise_file="n12.wav", noise_offset=-3, noise_class="alarm_siren", noise_level=0.4375,
              snr_db=7.25, gain=0.03125, rt60=0.625, early_reflections_ms=50.0, babble_talkers=3, speed_factor=1.0625,
              noise_tilt_db_per_octave=-2.5, noise_lowpass_hz=2500.0, rir_file="rooms/hall.wav", noise_count=3,
              clip_level_db=-6.5, telephone=1, codec="alaw", gain_db=-4.25, mixture_tilt_db_per_octave=3.5)
    return ex


def schema_2_record(config, rng, monkeypatch):
    """A record as schema 2 wrote it: version 2, without the keys schema 3 added."""
    ex = make_example(config, rng)
    monkeypatch.setattr(schema_lib, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(schema_lib, "METADATA_FEATURES", {k: v for k, v in schema_lib.METADATA_FEATURES.items()
                                                          if k not in schema_lib.ADDED_IN_3})
    blob = encode(ex, config)
    monkeypatch.undo()
    return ex, blob


def test_schema_2_records_read_with_the_added_keys_at_their_defaults(monkeypatch):
    config = SpectrogramConfig()
    ex, blob = schema_2_record(config, np.random.default_rng(5), monkeypatch)
    assert b"rir_file" not in blob and b"voice_file" in blob
    out = decode(blob)
    assert out["schema_version"] == 2
    assert {k: out[k] for k in schema_lib.ADDED_IN_3} == schema_lib.ADDED_IN_3
    assert out["voice_file"] == ex["voice_file"] and out["rt60"] == ex["rt60"]
    new = encode(make_example(config, np.random.default_rng(6)), config)
    parsed = tf.io.parse_example(tf.constant([blob, new]), tf_feature_spec())
    assert parsed["schema_version"].numpy().tolist() == [2, 3]
    assert parsed["rir_file"].numpy().tolist() == [b"", b"rooms/hall.wav"]
    assert parsed["noise_count"].numpy().tolist() == [1, 3]
    assert parsed["codec"].numpy().tolist() == [b"", b"alaw"]
    np.testing.assert_allclose(parsed["gain_db"].numpy(), [0.0, -4.25])


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip(dtype):
    config = SpectrogramConfig(dtype=dtype)
    ex = make_example(config, np.random.default_rng(0))
    out = decode(encode(ex, config))
    assert out["schema_version"] == SCHEMA_VERSION
    for key in SPECTROGRAM_KEYS:
        assert out[key].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(out[key], ex[key].astype(dtype))
    for key in schema_lib.METADATA_FEATURES:
        assert out[key] == pytest.approx(ex[key]) if isinstance(ex[key], float) else out[key] == ex[key]


def test_tensorflow_reads_our_bytes_and_we_read_tensorflows():
    config = SpectrogramConfig()
    rng = np.random.default_rng(1)
    examples = [make_example(config, rng) for _ in range(3)]
    blobs = [encode(e, config) for e in examples]
    parsed = tf.io.parse_example(tf.constant(blobs), tf_feature_spec())
    mags = tf.reshape(tf.io.decode_raw(parsed["noisy_magnitude"], tf.float16), (3, *config.shape)).numpy()
    for i, e in enumerate(examples):
        np.testing.assert_array_equal(mags[i], e["noisy_magnitude"].astype(np.float16))
    assert parsed["noise_offset"].numpy().tolist() == [-3] * 3
    assert parsed["speaker_id"].numpy()[0] == b"19"
    assert parsed["schema_version"].numpy().tolist() == [SCHEMA_VERSION] * 3
    # Bytes TensorFlow serializes (its own field order) decode the same.
    proto = tf.train.Example.FromString(blobs[0])
    again = decode(proto.SerializeToString())
    np.testing.assert_array_equal(again["clean_phase"], examples[0]["clean_phase"].astype(np.float16))
    assert again["voice_file"] == examples[0]["voice_file"]


def test_decode_refuses_other_schema_version(monkeypatch):
    config = SpectrogramConfig()
    ex = make_example(config, np.random.default_rng(2))
    monkeypatch.setattr(schema_lib, "SCHEMA_VERSION", 99)
    blob = encode(ex, config)
    monkeypatch.undo()
    with pytest.raises(SchemaVersionError, match=r"schema version 99.*reads versions 2, 3.*Rebuild the dataset"):
        decode(blob)


def test_schema_1_data_is_refused_but_schema_1_models_are_read():
    # Schema 2 added augmentation metadata; records and datasets of schema 1 lack it and are refused,
    # while a model trained on schema 1 reads the same spectrogram features and keeps loading.
    # Schema 3 added more metadata with defaults, so schema 2 data is still read.
    assert SCHEMA_VERSION == 3 and schema_lib.MODEL_SCHEMA_VERSIONS == (1, 2, 3)
    assert schema_lib.READ_SCHEMA_VERSIONS == (2, 3)
    with pytest.raises(SchemaVersionError, match=r"schema version 1, but this toolkit reads versions 2, 3\. Rebuild"):
        schema_lib.check_schema_version(1, "This record")
    schema_lib.check_schema_version(2, "This record")
    schema_lib.check_schema_version(1, "model.json", accepted=schema_lib.MODEL_SCHEMA_VERSIONS)
    with pytest.raises(SchemaVersionError, match=r"schema version 4, but this toolkit reads versions 1, 2, 3\."):
        schema_lib.check_schema_version(4, "model.json", accepted=schema_lib.MODEL_SCHEMA_VERSIONS)


def test_encode_checks_shape_and_keys():
    config = SpectrogramConfig()
    ex = make_example(config, np.random.default_rng(3))
    ex["noisy_phase"] = ex["noisy_phase"][:, :64]
    with pytest.raises(ValueError, match=r"noisy_phase must have shape \(128, 128\)"):
        encode(ex, config)
    del ex["gain"]
    with pytest.raises(ValueError, match="missing: \\['gain'\\]"):
        encode(ex, config)


def test_dataset_info_round_trip(tmp_path):
    import json

    from tfrecord_schema.dataset import Dataset
    from tfrecord_schema.dataset_info import DatasetInfo, ShardInfo, SplitInfo

    splits = {"train": {"num_examples": 3, "num_bytes": 30,
                        "shards": [{"file": "train.tfrecord-00000-of-00001", "num_examples": 3, "num_bytes": 30}]}}
    info = DatasetInfo(name="ds", spectrogram=SpectrogramConfig(dtype="float32"), splits=splits, seed=4,
                       arguments={"num_examples": 3}, build_seconds=1.5, extra={"future_key": [1]})
    path = info.write(str(tmp_path))
    text = open(path, encoding="utf-8").read()
    assert text == json.dumps(info.to_dict(), indent=1)
    assert list(json.loads(text)) == ["name", "schema_version", "spectrogram", "compression", "seed", "arguments",
                                      "splits", "build_seconds", "future_key"]
    back = DatasetInfo.read(tmp_path)
    assert back == info and DatasetInfo.from_dict(info.to_dict()) == info
    dataset = Dataset.open(tmp_path)
    assert dataset.shard_paths("train") == [f"{tmp_path}/train.tfrecord-00000-of-00001"]
    assert dataset.splits["train"] == SplitInfo("train", (ShardInfo("train.tfrecord-00000-of-00001", 3, 30),))
    assert dataset.splits["train"].to_dict() == splits["train"] and dataset.num_examples("test") == 0


def test_dataset_info_refuses_bad_files(tmp_path):
    from tfrecord_schema.dataset_info import DatasetInfo

    with pytest.raises(FileNotFoundError, match="holds no dataset_info.json: it is not a dataset directory"):
        DatasetInfo.read(tmp_path)
    (tmp_path / "dataset_info.json").write_text('{"schema_version": 1')
    with pytest.raises(ValueError, match="is not valid JSON.*Rebuild it"):
        DatasetInfo.read(tmp_path)
    (tmp_path / "dataset_info.json").write_text('{"schema_version": 1, "splits": {}}')
    with pytest.raises(ValueError, match="has no 'spectrogram' entry"):
        DatasetInfo.read(tmp_path)
    (tmp_path / "dataset_info.json").write_text('{"schema_version": 7, "spectrogram": {}, "splits": {}}')
    with pytest.raises(SchemaVersionError, match=r"schema version 7, but this toolkit reads versions 2, 3\. Rebuild"):
        DatasetInfo.read(tmp_path)


def test_schema_2_datasets_are_read(tmp_path):
    from tfrecord_schema.dataset import Dataset
    from beam_pipelines.testing import write_dataset

    write_dataset(tmp_path, splits={"train": 3}, info_schema_version=2, record_schema_version=2)
    dataset = Dataset.open(tmp_path)
    assert dataset.info.schema_version == 2 and dataset.num_examples("train") == 3
