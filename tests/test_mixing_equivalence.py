"""One mixing rule: the examples mixed on the fly from a source store are the static store's examples.

Both stores are built by `speech-enhance dataset` from the same folders of 16-bit audio at the
store's rate (8 kHz), so the source store holds the decoded samples exactly. For every example of
every split, `SourceMixer.spectrograms` at the static record's index gives the record's four
spectrograms bit for bit (float16) and its metadata, with and without augmentation (simulated rooms
and recorded impulse responses, babble, speed, noise colour, several noises, clipping, telephone
band and codecs, gain and tilt).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile

import speech_enhance
from beam_pipelines import synthetic
from mixing.on_the_fly import SourceMixer
from mixing.options import AugmentOptions, MixOptions
from tfrecord_schema.dataset import Dataset
from tfrecord_schema.schema import METADATA_FEATURES, SPECTROGRAM_KEYS, decode
from tfrecord_schema.sources import SourceStore

RATE = 8000
SEED = 3
AUGMENT_FLAGS = ["--reverb-probability", "0.5", "--rir-source", "both", "--rooms", "4", "--babble-probability", "0.3",
                 "--babble-talkers", "1:2", "--speed-probability", "0.3", "--noise-tilt-db", "3",
                 "--noise-lowpass-probability", "0.3", "--several-noises-probability", "0.3",
                 "--clip-probability", "0.2", "--telephone-probability", "0.3", "--telephone-codec", "both",
                 "--gain-probability", "0.3", "--mixture-tilt-probability", "0.3"]
AUGMENT = AugmentOptions(reverb_probability=0.5, rir_source="both", room_count=4, babble_probability=0.3, babble_talkers=(1, 2),
                         speed_probability=0.3, noise_tilt_db=3.0, noise_lowpass_probability=0.3,
                         several_noises_probability=0.3, clip_probability=0.2, telephone_probability=0.3,
                         telephone_codec="both", gain_probability=0.3, mixture_tilt_probability=0.3)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """8 speakers x 3 utterances and 9 noise files (3 classes), 16-bit WAV at 8 kHz."""
    root = tmp_path_factory.mktemp("pcm16")
    rng = np.random.default_rng(5)
    voice_dir, noise_dir = root / "voices", root / "noises"
    for s in range(8):
        os.makedirs(voice_dir / str(100 + s))
        for u in range(3):
            audio = synthetic.speech(rng, int(rng.uniform(2, 4) * RATE), RATE, rng.uniform(95, 230))
            soundfile.write(voice_dir / str(100 + s) / f"{100 + s}-1-{u:04d}.wav", 0.5 * audio / np.max(np.abs(audio)),
                            RATE, subtype="PCM_16")
    os.makedirs(noise_dir)
    rows = ["file\tclass"]
    for kind in synthetic.ENVIRONMENTAL_NOISE_KINDS[:3]:
        for i in range(3):
            audio = synthetic.noise(rng, int(rng.uniform(0.5, 3) * RATE), RATE, kind)
            soundfile.write(noise_dir / f"{kind}_{i}.wav", 0.5 * audio / np.max(np.abs(audio)), RATE, subtype="PCM_16")
            rows.append(f"{kind}_{i}.wav\t{kind}")
    (noise_dir / "classes.tsv").write_text("\n".join(rows) + "\n")
    rir_dir = root / "rirs"
    os.makedirs(rir_dir)
    t = np.arange(int(0.25 * RATE)) / RATE
    for i in range(6):
        response = 0.5 * rng.standard_normal(t.size) * np.exp(-t / (0.02 + 0.02 * i))
        response[0] = 0.9
        soundfile.write(rir_dir / f"room{i}.wav", response, RATE, subtype="PCM_16")
    return str(voice_dir), str(noise_dir), str(rir_dir)


def dataset(folders, output, *flags) -> None:
    voice_dir, noise_dir, rir_dir = folders
    assert speech_enhance.main(["dataset", "--voice-dir", voice_dir, "--noise-dir", noise_dir, "--rir-dir", rir_dir,
                                "--output", str(output), "--workers", "1", *flags]) == 0


@pytest.fixture(scope="module")
def store(folders, tmp_path_factory):
    output = tmp_path_factory.mktemp("sources") / "store"
    dataset(folders, output, "--kind", "sources", "--sample-rate", str(RATE))
    return SourceStore.open(output)


def as_stored(kind: str, value):
    return float(np.float32(value)) if kind == "float" else value


@pytest.mark.parametrize("augment", [None, AUGMENT], ids=["plain", "augmented"])
def test_mixing_from_the_source_store_reproduces_the_static_store(folders, store, tmp_path, augment):
    output = tmp_path / "static"
    dataset(folders, output, "--num-examples", "60", "--seed", str(SEED), *(AUGMENT_FLAGS if augment else []))
    static = Dataset.open(output)
    checked = 0
    for split in static.splits:
        records = [decode(record) for record in static.records(split)]
        mixer = SourceMixer.for_config(store, split, MixOptions(seed=SEED), static.config, augment=augment)
        indices = [int(r["example_id"].rsplit("-", 1)[1]) for r in records]
        mixed = mixer.spectrograms(indices, static.config, metadata=True)
        for k, record in enumerate(records):
            for key in SPECTROGRAM_KEYS:
                assert mixed[key][k].dtype == record[key].dtype
                np.testing.assert_array_equal(mixed[key][k], record[key], err_msg=f"{record['example_id']} {key}")
            # The record holds float metadata as float32.
            assert {key: as_stored(kind, mixed["metadata"][k][key]) for key, kind in METADATA_FEATURES.items()} == \
                {key: record[key] for key in METADATA_FEATURES}
            checked += 1
    assert checked == 60
    if augment is not None:  # the augmentations did happen in the examples compared
        kinds = [decode(r) for s in static.splits for r in static.records(s)]
        assert any(e["rt60"] > 0 for e in kinds) and any(e["babble_talkers"] for e in kinds)
        assert any(e["speed_factor"] != 1.0 for e in kinds)
        assert any(e["rir_file"] for e in kinds) and any(e["rt60"] > 0 and not e["rir_file"] for e in kinds)
        assert any(e["noise_count"] > 1 for e in kinds) and any(e["codec"] for e in kinds)
        assert any(e["clip_level_db"] for e in kinds) and any(e["gain_db"] for e in kinds)


def test_a_mixer_refuses_a_model_rate_the_store_does_not_hold(store):
    from tfrecord_schema.config import SpectrogramConfig

    with pytest.raises(ValueError, match="16000 Hz.*8000 Hz audio.*--kind sources --sample-rate 16000"):
        SourceMixer.for_config(store, "train", MixOptions(), SpectrogramConfig.for_sample_rate(16000))


def test_later_indices_draw_new_mixtures_of_the_same_sources(store):
    """Training numbers examples on across epochs: index n + examples_per_epoch is another mixture."""
    from tfrecord_schema.config import SpectrogramConfig

    mixer = SourceMixer.for_config(store, "train", MixOptions(seed=SEED), SpectrogramConfig())
    first, later = mixer.draw(5), mixer.draw(5 + 1000)
    again = mixer.draw(5)
    np.testing.assert_array_equal(first.mixture, again.mixture)
    assert not np.array_equal(first.mixture, later.mixture)
    assert later.metadata["example_id"] == "train-00001005"
