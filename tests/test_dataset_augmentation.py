"""Augmentation in the dataset job (reverberation, babble, speed, noise tilt and low-pass), on Beam's
FnApiRunner, with audio made in tmp_path: each "speaker" is a tone of its own frequency, so a
record's spectrum tells whose voice it holds and how fast it was played; noises are white."""

import os

import numpy as np
import pytest
import soundfile

import speech_enhance
from mixing import augmentation as aug
from beam_pipelines.launcher import run_dataset
from beam_pipelines.options import DatasetOptions
from mixing.options import AugmentOptions, MixOptions
from test_dataset_pipeline import read_split
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.schema import METADATA_FEATURES
from tfrecord_schema.spectrogram import from_magnitude_phase

RATE = 8000
TONES = {"301": 300.0, "302": 420.0, "303": 560.0, "304": 700.0, "305": 860.0}  # speaker -> Hz
ROOMS = 8
ALL_ON = AugmentOptions(reverb_probability=0.3, room_count=ROOMS, babble_probability=0.4, babble_talkers=(1, 3),
                            speed_probability=0.5, speed_range=(0.9, 1.1), noise_tilt_db=6.0,
                            noise_lowpass_probability=0.4, noise_lowpass_hz=(1000.0, 2000.0))
CONFIG = SpectrogramConfig()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(5)
    voice_dir, noise_dir = root / "voices", root / "noises"
    t = np.arange(4 * RATE) / RATE
    for speaker, freq in TONES.items():
        (voice_dir / speaker).mkdir(parents=True)
        tone = 0.2 * np.sin(2 * np.pi * freq * t) * (0.7 + 0.3 * np.sin(2 * np.pi * 2.0 * t))
        soundfile.write(voice_dir / speaker / f"{speaker}-1-0000.wav", tone.astype(np.float32), RATE, subtype="FLOAT")
    noise_dir.mkdir()
    for i in range(2):
        soundfile.write(noise_dir / f"white{i}.wav", (0.1 * rng.standard_normal(3 * RATE)).astype(np.float32), RATE,
                        subtype="FLOAT")
    (noise_dir / "classes.tsv").write_text("file\tclass\nwhite0.wav\twhite\nwhite1.wav\twhite\n")
    return str(voice_dir), str(noise_dir)


def build(corpus, output, augment, workers=1, snr_db=(-10.0, -10.0), num_examples=40):
    voice_dir, noise_dir = corpus
    opts = DatasetOptions(voice_dir=voice_dir, noise_dir=noise_dir, output=str(output), num_examples=num_examples,
                          split_fractions=(1.0, 0.0, 0.0), chunk_size=7, max_shard_bytes=3 << 20, augment=augment,
                          mix=MixOptions(level_range=None, snr_range_db=snr_db))
    info = run_dataset(opts, workers=workers).info.to_dict()
    return info, read_split(str(output), info, "train")


def signals(record):
    noisy = from_magnitude_phase(record["noisy_magnitude"], record["noisy_phase"], CONFIG, CONFIG.window_samples)
    clean = from_magnitude_phase(record["clean_magnitude"], record["clean_phase"], CONFIG, CONFIG.window_samples)
    return noisy.astype(np.float64), clean.astype(np.float64)


def spectrum(x):
    return np.abs(np.fft.rfft(x * np.hanning(x.shape[0]))) ** 2, np.fft.rfftfreq(x.shape[0], 1 / RATE)


def band_db(power, freqs, lo, hi):
    return 10 * np.log10(np.mean(power[(freqs >= lo) & (freqs < hi)]) + 1e-30)


@pytest.fixture(scope="module")
def augmented(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("aug") / "ds"
    return (out, *build(corpus, out, ALL_ON))


def test_same_seed_gives_identical_augmented_shards_with_one_and_two_workers(corpus, augmented, tmp_path):
    out1, info1, _ = augmented
    info2, _ = build(corpus, tmp_path / "two", ALL_ON, workers=2)
    files = [s["file"] for s in info1["splits"]["train"]["shards"]]
    assert len(files) > 1 and files == [s["file"] for s in info2["splits"]["train"]["shards"]]
    for name in files:
        with open(out1 / name, "rb") as a, open(tmp_path / "two" / name, "rb") as b:
            assert a.read() == b.read(), name
    assert info1["augmentation"] == info2["augmentation"]


def test_metadata_and_summary_match_the_records(augmented):
    _, info, records = augmented
    summary = info["augmentation"]
    assert summary["options"] == ALL_ON.to_dict()
    counts = summary["counts"]
    assert counts["examples"] == len(records) == 40
    assert counts["reverberant"] == sum(r["rt60"] > 0 for r in records) > 0
    assert counts["babble"] == sum(r["babble_talkers"] > 0 for r in records) > 0
    assert counts["speed"] == sum(r["speed_factor"] != 1.0 for r in records) > 0
    assert counts["noise_lowpass"] == sum(r["noise_lowpass_hz"] > 0 for r in records) > 0
    assert counts["noise_tilt"] == sum(r["noise_tilt_db_per_octave"] != 0 for r in records) == 40
    hist = summary["histograms"]
    assert sum(hist["rt60_s"]["counts"]) == counts["reverberant"]
    assert sum(hist["babble_talkers"]["counts"][1:]) == counts["babble"]
    assert sum(hist["speed_factor"]["counts"]) == counts["speed"]
    assert sum(hist["noise_lowpass_hz"]["counts"]) == counts["noise_lowpass"]
    for r in records:
        assert set(aug.NO_AUGMENTATION) <= set(r) <= set(METADATA_FEATURES) | {"schema_version", "noisy_magnitude",
                                                                                "noisy_phase", "clean_magnitude",
                                                                                "clean_phase"}
        assert r["babble_talkers"] == 0 or 1 <= r["babble_talkers"] <= 3
        assert r["speed_factor"] == 1.0 or 0.9 <= r["speed_factor"] <= 1.1 + 1e-6
        assert r["noise_lowpass_hz"] == 0 or 1000 <= r["noise_lowpass_hz"] <= 2000
        assert abs(r["noise_tilt_db_per_octave"]) <= 6.0 + 1e-6
        assert (r["rt60"] > 0) == (r["early_reflections_ms"] == 50.0)


def test_babble_is_other_speakers_of_the_split_never_the_target(augmented):
    _, _, records = augmented
    babble = [r for r in records if r["babble_talkers"] and not r["rt60"] and not r["noise_lowpass_hz"]]
    assert babble
    for r in babble:
        assert r["noise_class"] == "babble"
        talkers = [name.split("/")[0] for name in r["noise_file"].split("+")]
        assert len(talkers) == r["babble_talkers"] and r["speaker_id"] not in talkers
        assert len(set(talkers)) == len(talkers)
        noisy, clean = signals(r)
        power, freqs = spectrum(noisy - clean)

        def tone_db(freq):
            return band_db(power, freqs, freq - 8, freq + 8)

        floor = band_db(power, freqs, 1500, 3000)
        own = TONES[r["speaker_id"]] * r["speed_factor"]
        assert tone_db(own) < max(tone_db(TONES[t]) for t in talkers) - 30, r["example_id"]
        for t in talkers:
            assert tone_db(TONES[t]) > floor + 20, (r["example_id"], t)
    assert all(r["noise_class"] == "white" for r in records if not r["babble_talkers"])


def test_speed_factor_shifts_the_pitch_of_the_voice(augmented):
    _, _, records = augmented
    checked = 0
    for r in records:
        if r["rt60"]:
            continue
        _, clean = signals(r)
        power, freqs = spectrum(clean)
        peak = freqs[int(np.argmax(power))]
        expected = TONES[r["speaker_id"]] * r["speed_factor"]
        assert abs(peak - expected) < 3.0, (r["example_id"], peak, expected, r["speed_factor"])
        checked += r["speed_factor"] != 1.0
    assert checked >= 3


def test_noise_tilt_and_lowpass_shape_the_noise_spectrum(augmented):
    _, _, records = augmented
    plain = [r for r in records if not r["babble_talkers"] and not r["rt60"]]
    assert any(r["noise_lowpass_hz"] for r in plain) and any(not r["noise_lowpass_hz"] for r in plain)
    for r in plain:
        noisy, clean = signals(r)
        power, freqs = spectrum(noisy - clean)
        slope = r["noise_tilt_db_per_octave"]
        if r["noise_lowpass_hz"]:
            cut = r["noise_lowpass_hz"]
            below, above = band_db(power, freqs, 150, 0.5 * cut), band_db(power, freqs, 1.8 * cut, 3900)
            # Tilt alone changes the two bands by the slope over the octaves between their centres.
            tilt_part = slope * np.log2(np.sqrt(1.8 * cut * 3900) / np.sqrt(150 * 0.5 * cut))
            assert below + tilt_part - above > 30, (r["example_id"], cut, below, above, slope)
        else:
            measured = (band_db(power, freqs, 1800, 2200) - band_db(power, freqs, 450, 550)) / 2.0  # 2 octaves
            assert abs(measured - slope) < 1.5, (r["example_id"], measured, slope)


def test_reverberation_target_keeps_early_reflections_and_late_energy_follows_rt60(corpus, tmp_path):
    reverb_only = AugmentOptions(reverb_probability=0.7, room_count=ROOMS)
    info, records = build(corpus, tmp_path / "rev", reverb_only, snr_db=(40.0, 40.0), num_examples=24)
    rooms = aug.room_bank(0, RATE, reverb_only.rt60_range, ROOMS)
    wet = [r for r in records if r["rt60"] > 0]
    dry = [r for r in records if r["rt60"] == 0]
    assert wet and dry and info["augmentation"]["counts"]["reverberant"] == len(wet)
    window = CONFIG.window_samples
    for r in wet:
        room = next(room for room in rooms if np.float32(room.rt60) == np.float32(r["rt60"]))
        audio, _ = soundfile.read(os.path.join(corpus[0], r["voice_file"]), dtype="float32")
        source = audio[r["voice_offset"]: r["voice_offset"] + window]
        early = room.voice_rir[: 2 + int(0.05 * RATE) + 1]
        noisy, clean = signals(r)
        expected = np.convolve(source, early)[:window] * r["gain"]
        # The target is the voice through direct path + 50 ms of reflections, not the dry voice.
        assert np.linalg.norm(clean - expected) < 0.02 * np.linalg.norm(expected), r["example_id"]
        dry_scaled = source * np.dot(clean, source) / np.dot(source, source)
        assert np.linalg.norm(clean - dry_scaled) > 0.02 * np.linalg.norm(clean)
        # The mixture is the voice through the whole response of the room whose RT60 is recorded
        # (the noise is 40 dB down): the late reverberation is in the mixture, not in the target.
        full = np.convolve(source, room.voice_rir)[:window] * r["gain"]
        assert np.linalg.norm(noisy - full) < 0.03 * np.linalg.norm(full), r["example_id"]
    for r in dry:  # at 40 dB SNR the mixture of a dry example is its clean voice
        noisy, clean = signals(r)
        assert np.sum((noisy - clean) ** 2) / np.sum(clean ** 2) < 10 ** (-3.5)


def test_room_bank_rt60_is_the_measured_decay_of_its_responses():
    rooms = aug.room_bank(0, RATE, (0.1, 0.9), ROOMS)
    assert rooms is aug.room_bank(0, RATE, (0.1, 0.9), ROOMS)  # simulated once per process
    targets = [0.1 + 0.8 * (i + 0.5) / ROOMS for i in range(ROOMS)]
    assert np.corrcoef(targets, [r.rt60 for r in rooms])[0, 1] > 0.7
    for room in rooms:
        assert np.argmax(np.abs(room.voice_rir)) == 2 and np.max(np.abs(room.voice_rir)) == 1.0
        assert room.rt60 == pytest.approx(aug.measure_rt60(room.voice_rir, RATE), abs=1e-3)
        # Energy decays: the last 100 ms hold far less than the first 100 ms after the direct path.
        head, tail = np.sum(room.voice_rir[:800] ** 2), np.sum(room.voice_rir[-800:] ** 2)
        assert tail < head * 10 ** (-2 - 3 * (len(room.voice_rir) / RATE - 0.2) / max(room.rt60, 0.1) / 2)
    # The measurement itself, on an exponential decay of known RT60.
    rng = np.random.default_rng(0)
    for rt60 in (0.2, 0.6):
        t = np.arange(RATE) / RATE
        decay = rng.standard_normal(RATE) * 10 ** (-3 * t / rt60)
        assert aug.measure_rt60(decay, RATE) == pytest.approx(rt60, rel=0.1)


def test_options_off_leave_records_unaugmented(corpus, augmented, tmp_path):
    info, records = build(corpus, tmp_path / "off", AugmentOptions(), snr_db=(0.0, 10.0), num_examples=12)
    assert info["augmentation"]["counts"] == {"examples": 12, "reverberant": 0, "babble": 0, "speed": 0,
                                              "noise_tilt": 0, "noise_lowpass": 0, "recorded_rir": 0,
                                              "several_noises": 0, "clipped": 0, "telephone": 0, "codec_ulaw": 0,
                                              "codec_alaw": 0, "gain": 0, "mixture_tilt": 0}
    _, _, augmented_records = augmented
    for r in records:
        assert {k: r[k] for k in aug.NO_AUGMENTATION} == aug.NO_AUGMENTATION
        assert r["noise_class"] == "white"
        noisy, clean = signals(r)
        measured = 10 * np.log10(np.sum(clean ** 2) / np.sum((noisy - clean) ** 2))
        assert abs(measured - r["snr_db"]) < 0.1
    # Augmentation draws come from children of the example's generator: the windows it picks are
    # those of an unaugmented build with the same seed (speed may move a window back at a file's end).
    off = {r["example_id"]: r for r in build(corpus, tmp_path / "off-same", AugmentOptions())[1]}
    for r in augmented_records:
        assert r["speaker_id"] == off[r["example_id"]]["speaker_id"]
        if r["speed_factor"] == 1.0:
            assert r["voice_offset"] == off[r["example_id"]]["voice_offset"]


def test_bad_values_are_refused_naming_the_argument(corpus, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"reverb_probability must be a probability between 0 and 1. "
                                         r"Received: reverb_probability=1.5"):
        AugmentOptions(reverb_probability=1.5)
    with pytest.raises(ValueError, match=r"babble_talkers takes whole numbers .* Received: babble_talkers=3:1"):
        AugmentOptions(babble_talkers=(3, 1))
    with pytest.raises(ValueError, match=r"speed_range takes factors .* Received: speed_range=0.1:1.1"):
        AugmentOptions(speed_range=(0.1, 1.1))
    with pytest.raises(ValueError, match=r"rt60_range takes seconds .* Received: rt60_range=0.9:0.1"):
        AugmentOptions(rt60_range=(0.9, 0.1))
    with pytest.raises(ValueError, match=r"noise_lowpass_hz must stay below the Nyquist frequency \(4000 Hz"):
        DatasetOptions(voice_dir=corpus[0], noise_dir=corpus[1], output=str(tmp_path / "x"), num_examples=4,
                       augment=AugmentOptions(noise_lowpass_probability=0.5, noise_lowpass_hz=(1000, 5000)))
    base = ["dataset", "--voice-dir", corpus[0], "--noise-dir", corpus[1], "--output", str(tmp_path / "y")]
    for flags, message in ((["--reverb-probability", "2"], "Received: --reverb-probability 2.0"),
                           (["--augment", "--babble-talkers", "0:4"], "Received: --babble-talkers 0:4"),
                           (["--noise-tilt-db", "-3"], "Received: --noise-tilt-db -3.0"),
                           (["--speed-range", "1.2:0.8"], "Received: --speed-range 1.2:0.8")):
        assert speech_enhance.main(base + flags) == 2
        assert message in capsys.readouterr().err, flags
    assert not (tmp_path / "y").exists()


def test_mixture_kinds_in_the_dataset_job_are_recorded_and_counted(corpus, tmp_path):
    options = AugmentOptions(several_noises_probability=0.5, clip_probability=0.4, telephone_probability=0.4,
                             telephone_codec="both", gain_probability=0.5, gain_range_db=(-6.0, -1.0),
                             mixture_tilt_probability=0.4)
    info, records = build(corpus, tmp_path / "mix", options, snr_db=(0.0, 10.0), num_examples=21)
    counts = info["augmentation"]["counts"]
    assert counts["several_noises"] == sum(r["noise_count"] > 1 for r in records) > 0
    assert counts["clipped"] == sum(r["clip_level_db"] < 0 for r in records) > 0
    assert counts["telephone"] == sum(r["telephone"] for r in records) > 0
    assert counts["codec_ulaw"] + counts["codec_alaw"] == counts["telephone"]
    assert counts["gain"] == sum(r["gain_db"] != 0 for r in records) > 0
    assert counts["mixture_tilt"] == sum(r["mixture_tilt_db_per_octave"] != 0 for r in records) > 0
    for r in records:
        assert r["schema_version"] == 3 and r["noise_file"].count("+") == r["noise_count"] - 1
        noisy, clean = signals(r)
        assert np.max(np.abs(noisy)) <= 1.0
