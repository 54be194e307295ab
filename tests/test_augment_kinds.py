"""The augmentations of one example, drawn by `mixing.draw.draw_example` from sources held in memory:
recorded room impulse responses, several noises, clipping, telephone band and codecs, gain and mixture
tilt. Each kind's effect is measured on the waveforms, against the same example drawn without it."""

import dataclasses

import numpy as np
import pytest

import speech_enhance
from mixing import augmentation as aug
from mixing.draw import Source, SplitSources, _several_noises, draw_example
from mixing.levels import PEAK_LIMIT
from mixing.options import AugmentOptions, MixOptions
from test_source_store import corpus, store_dir  # noqa: F401  (the source store these tests mix from)

RATE = 16000
WINDOW = RATE  # one-second examples
MIX = MixOptions(seed=3)
ADDED = ("rir_file", "noise_count", "clip_level_db", "telephone", "codec", "gain_db", "mixture_tilt_db_per_octave")


class Audio(dict):
    def get(self, key):  # the AudioSource protocol
        return self[key]


def _rir(rng, rt60, length):
    """A recorded-like impulse response: silence, a direct path of 0.5 at sample 40, then a decaying tail."""
    t = np.arange(length) / RATE
    rir = 0.1 * rng.standard_normal(length) * 10 ** (-3 * t / rt60)
    rir[:41] = 0.0
    rir[40] = 0.5
    return rir.astype(np.float32)


@pytest.fixture(scope="module")
def split():
    rng = np.random.default_rng(11)
    audio, sources = Audio(), []
    t = np.arange(3 * RATE) / RATE
    for i, freq in enumerate((180.0, 230.0, 310.0, 400.0)):
        voice = 0.2 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * t))
        audio[f"v{i}"] = (voice + 0.05 * np.sin(2 * np.pi * 5 * freq * t)).astype(np.float32)
        sources.append(Source("voice", f"voices/{i}.wav", f"speaker{i}", "train", t.shape[0], f"v{i}"))
    for i in range(4):
        audio[f"n{i}"] = (0.1 * rng.standard_normal(2 * RATE)).astype(np.float32)
        sources.append(Source("noise", f"noises/{i}.wav", "white", "train", 2 * RATE, f"n{i}"))
    for i, rt60 in enumerate((0.3, 0.7)):
        audio[f"r{i}"] = _rir(rng, rt60, RATE // 2)
        sources.append(Source("rir", f"rooms/{i}.wav", "room", "train", RATE // 2, f"r{i}"))
    return SplitSources(sources, "train", WINDOW), audio


def draw(split, index, **options):
    sources, audio = split
    return draw_example("train", index, sources, audio, MIX, RATE, WINDOW, AugmentOptions(**options))


def band_energy_db(x, lo, hi):
    power = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(x.shape[0], 1 / RATE)
    return 10 * np.log10(np.sum(power[(freqs >= lo) & (freqs < hi)]) + 1e-300)


def test_telephone_band_removes_energy_outside_300_3400_hz_and_keeps_the_target(split):
    for index in range(4):
        plain = draw(split, index, gain_probability=0.0, noise_tilt_db=0.0, speed_probability=0.0)
        phone = draw(split, index, telephone_probability=1.0)
        assert phone.metadata["telephone"] == 1 and phone.metadata["codec"] == ""
        np.testing.assert_array_equal(phone.clean, plain.clean)
        for lo, hi in ((0, 300), (3400, RATE / 2)):
            drop = band_energy_db(plain.mixture, lo, hi) - band_energy_db(phone.mixture, lo, hi)
            assert drop > 30, (index, lo, hi, drop)
        # Inside the band the mixture is what it was.
        assert abs(band_energy_db(plain.mixture, 500, 3000) - band_energy_db(phone.mixture, 500, 3000)) < 0.1


@pytest.mark.parametrize("codec", ["ulaw", "alaw"])
def test_codec_round_trip_has_256_levels_and_a_bounded_error(codec):
    x = np.linspace(-1.0, 1.0, 200_001).astype(np.float32)
    y = aug.compand(x, codec)
    assert len(np.unique(y)) == aug.CODEC_LEVELS == 256
    # The error is half a code step of the companded value times the slope of the expansion there.
    if codec == "ulaw":
        slope = (1 + aug.MU_LAW * np.abs(x)) * np.log1p(aug.MU_LAW) / aug.MU_LAW
    else:
        log_a = 1 + np.log(aug.A_LAW)
        slope = np.where(np.abs(x) < 1 / aug.A_LAW, log_a / aug.A_LAW, np.abs(x) * log_a)
    bound = slope * (1.0 / (aug.CODEC_LEVELS - 1)) * 1.05 + 1e-6
    assert np.all(np.abs(y - x) <= bound)
    assert np.max(np.abs(y - x)) > 0.005  # it does quantise: at full scale about 0.02 (mu-law)
    # Small samples keep a small error (companding's point): below 0.01 in amplitude, error < 2e-4.
    small = np.abs(x) < 0.01
    assert np.max(np.abs(y - x)[small]) < 5e-4
    with pytest.raises(ValueError, match="codec must be 'ulaw' or 'alaw'. Received: codec='gsm'"):
        aug.compand(x, "gsm")


def test_telephone_codecs_are_drawn_and_quantise_the_mixture(split):
    codecs = [draw(split, i, telephone_probability=1.0, telephone_codec="both").metadata["codec"] for i in range(12)]
    assert set(codecs) == {"ulaw", "alaw"}
    drawn = draw(split, 0, telephone_probability=1.0, telephone_codec="ulaw")
    assert drawn.metadata["codec"] == "ulaw" and len(np.unique(drawn.mixture)) <= 256


def test_clipping_cuts_the_mixture_at_the_recorded_level_below_its_peak_and_keeps_the_target(split):
    for index in range(4):
        plain = draw(split, index)
        clipped = draw(split, index, clip_probability=1.0, clip_level_db=(-12.0, -3.0))
        level_db = clipped.metadata["clip_level_db"]
        assert -12.0 <= level_db <= -3.0
        np.testing.assert_array_equal(clipped.clean, plain.clean)
        expected_peak = np.max(np.abs(plain.mixture)) * 10 ** (level_db / 20)
        assert np.max(np.abs(clipped.mixture)) == pytest.approx(expected_peak, rel=1e-6)
        assert np.mean(np.abs(clipped.mixture) >= expected_peak * (1 - 1e-6)) > 0.001  # samples sit at the level
        untouched = np.abs(plain.mixture) < expected_peak * 0.999
        np.testing.assert_array_equal(clipped.mixture[untouched], plain.mixture[untouched])


def test_several_noises_are_recorded_and_raise_the_noise_energy(split):
    sources, audio = split
    counts = set()
    for index in range(8):
        drawn = draw(split, index, several_noises_probability=1.0, several_noises_count=(2, 3))
        count = drawn.metadata["noise_count"]
        names = drawn.metadata["noise_file"].split("+")
        counts.add(count)
        assert 2 <= count <= 3 and len(names) == count and len(set(n.split("@")[0] for n in names)) == count
        assert drawn.metadata["noise_class"] == "white"
    assert counts == {2, 3}
    # Before the level is applied the sum holds more energy than its first noise.
    rng = np.random.default_rng(0)
    first = audio["n0"][:WINDOW]
    total, names = _several_noises(rng, AugmentOptions(several_noises_count=(3, 3)), sources.noises[0], first,
                                   sources, audio, WINDOW)
    assert len(names) == 2 and np.sum(total.astype(np.float64) ** 2) > 1.5 * np.sum(first.astype(np.float64) ** 2)
    np.testing.assert_array_equal(first, audio["n0"][:WINDOW])  # the cached window is not changed in place


@pytest.mark.parametrize("target", ["early", "dry"])
def test_recorded_rir_reverberates_the_voice_with_that_files_response(split, target):
    sources, audio = split
    used = set()
    for index in range(6):
        drawn = draw(split, index, reverb_probability=1.0, rir_source="files", reverb_target=target)
        meta = drawn.metadata
        rir_src = next(s for s in sources.rirs if s.file == meta["rir_file"])
        used.add(rir_src.file)
        recorded = audio[rir_src.key].astype(np.float64)
        aligned = recorded[38:] / 0.5  # from 2 samples before the direct path, peak 1
        voice = audio[next(s.key for s in sources.voices if s.file == meta["voice_file"])]
        voice = voice[meta["voice_offset"]: meta["voice_offset"] + WINDOW].astype(np.float64)
        expected = np.convolve(voice, aligned)[:WINDOW]
        reverberant = (drawn.mixture.astype(np.float64) - drawn.noise) / meta["gain"]
        assert np.linalg.norm(reverberant - expected) < 1e-4 * np.linalg.norm(expected)
        assert meta["rt60"] == pytest.approx(aug.measure_rt60(aligned, RATE), abs=1e-3)
        early_ms = 50.0 if target == "early" else 0.0
        assert meta["early_reflections_ms"] == early_ms
        kept = aligned[: 2 + int(round(early_ms * RATE / 1000)) + 1]
        target_voice = np.convolve(voice, kept)[:WINDOW] * meta["gain"]
        assert np.linalg.norm(drawn.clean - target_voice) < 1e-5 * np.linalg.norm(target_voice)
        if target == "dry":  # the direct path alone: the voice itself, 2 samples later (the aligned start)
            np.testing.assert_allclose(drawn.clean[2:], voice[:-2] * meta["gain"], atol=1e-6)
    assert used == {"rooms/0.wav", "rooms/1.wav"}
    rt60s = {draw(split, i, reverb_probability=1.0, rir_source="files").metadata["rt60"] for i in range(6)}
    assert min(rt60s) < 0.45 < max(rt60s)  # the two files' decays (0.3 and 0.7 s) are told apart


def test_rir_source_chooses_simulated_rooms_files_or_both(split):
    sources, audio = split
    files = [draw(split, i, reverb_probability=1.0, room_count=4, rir_source="both").metadata["rir_file"]
             for i in range(12)]
    assert "" in files and any(files)
    simulated = draw(split, 0, reverb_probability=1.0, room_count=4)
    assert simulated.metadata["rir_file"] == "" and simulated.metadata["rt60"] > 0
    # A split without recorded responses falls back to simulated rooms.
    no_rirs = SplitSources([*sources.voices, *sources.noises], "train", WINDOW)
    drawn = draw_example("train", 0, no_rirs, audio, MIX, RATE, WINDOW,
                         AugmentOptions(reverb_probability=1.0, room_count=4, rir_source="files"))
    np.testing.assert_array_equal(drawn.mixture, simulated.mixture)


def test_gain_scales_mixture_and_target_together_and_the_peak_stays_limited(split):
    for index in range(4):
        plain = draw(split, index)
        gained = draw(split, index, gain_probability=1.0, gain_range_db=(-9.0, -3.0))
        g = 10 ** (gained.metadata["gain_db"] / 20)
        assert -9.0 <= gained.metadata["gain_db"] <= -3.0
        np.testing.assert_allclose(gained.mixture, plain.mixture * g, rtol=1e-3, atol=1e-7)
        np.testing.assert_allclose(gained.clean, plain.clean * g, rtol=1e-3, atol=1e-7)
        assert gained.metadata["snr_db"] == plain.metadata["snr_db"]
    loud = draw(split, 0, gain_probability=1.0, gain_range_db=(40.0, 40.0))
    assert np.max(np.abs(loud.mixture)) == pytest.approx(PEAK_LIMIT, rel=1e-6)
    assert loud.metadata["gain_db"] < 40.0  # the gain applied, lowered by the peak limit


def test_mixture_tilt_changes_the_mixture_spectrum_by_the_recorded_slope(split):
    for index in range(4):
        plain = draw(split, index)
        tilted = draw(split, index, mixture_tilt_probability=1.0, mixture_tilt_db=6.0)
        slope = tilted.metadata["mixture_tilt_db_per_octave"]
        assert -6.0 <= slope <= 6.0 and slope != 0.0
        # The target is untouched, up to the common gain the peak limit may have applied.
        g = 10 ** (tilted.metadata["gain_db"] / 20)
        np.testing.assert_allclose(tilted.clean, plain.clean * g, rtol=1e-3, atol=1e-7)
        # Bin by bin over the window, the mixture's level changes by slope x octaves from 1 kHz (+ that gain).
        freqs = np.fft.rfftfreq(WINDOW, 1 / RATE)
        ratio_db = 20 * np.log10(np.abs(np.fft.rfft(tilted.mixture.astype(np.float64)))
                                 / np.abs(np.fft.rfft(plain.mixture.astype(np.float64))))
        band = (freqs >= 100) & (freqs <= 7000)
        fitted, offset = np.polyfit(np.log2(freqs[band] / 1000), ratio_db[band], 1)
        assert fitted == pytest.approx(slope, abs=0.01) and offset == pytest.approx(tilted.metadata["gain_db"], abs=0.02)


def test_same_draw_twice_is_identical(split):
    options = dict(reverb_probability=0.5, room_count=4, rir_source="both", babble_probability=0.2,
                   speed_probability=0.3, noise_tilt_db=3.0, several_noises_probability=0.5,
                   clip_probability=0.5, telephone_probability=0.5, telephone_codec="both", gain_probability=0.5,
                   mixture_tilt_probability=0.5)
    for index in range(6):
        a, b = draw(split, index, **options), draw(split, index, **options)
        assert a.metadata == b.metadata
        for key in ("mixture", "clean", "noise"):
            np.testing.assert_array_equal(getattr(a, key), getattr(b, key))


def test_each_kind_on_or_off_leaves_the_others_draws_unchanged(split):
    # The gain stays negative so the peak limit never lowers it: the recorded gain is the one drawn.
    kinds = {"several_noises_probability": ("noise_count",), "clip_probability": ("clip_level_db",),
             "telephone_probability": ("telephone", "codec"), "gain_probability": ("gain_db",),
             "mixture_tilt_probability": ("mixture_tilt_db_per_octave",),
             "reverb_probability": ("rt60", "rir_file"), "speed_probability": ("speed_factor",)}
    every = AugmentOptions(**{k: 0.6 for k in kinds}, room_count=4, rir_source="both", telephone_codec="both",
                           gain_range_db=(-6.0, -1.0), noise_tilt_db=4.0)
    for index in range(6):
        full = draw_example("train", index, split[0], split[1], MIX, RATE, WINDOW, every).metadata
        for kind, keys in kinds.items():
            without = draw_example("train", index, split[0], split[1], MIX, RATE, WINDOW,
                                   dataclasses.replace(every, **{kind: 0.0})).metadata
            others = [k for k in (*ADDED, "rt60", "speed_factor", "noise_tilt_db_per_octave", "speaker_id")
                      if k not in keys and not (kind == "reverb_probability" and k == "early_reflections_ms")]
            assert {k: without[k] for k in others} == {k: full[k] for k in others}, (index, kind)
            assert {k: without[k] for k in keys} == {k: aug.NO_AUGMENTATION[k] for k in keys}


def test_statistics_count_each_kind(split):
    drawn = [draw(split, i, several_noises_probability=0.5, clip_probability=0.5, telephone_probability=0.5,
                  telephone_codec="both", gain_probability=0.5, gain_range_db=(-6.0, -1.0),
                  mixture_tilt_probability=0.5, reverb_probability=0.5, rir_source="files").augmentation
             for i in range(16)]
    stats = aug.merge_stats([aug.stats_of(drawn[:7]), aug.stats_of(drawn[7:])])
    assert stats["examples"] == 16
    assert stats["several_noises"] == sum(m["noise_count"] > 1 for m in drawn) > 0
    assert stats["clipped"] == sum(m["clip_level_db"] != 0 for m in drawn) > 0
    assert stats["telephone"] == sum(m["telephone"] for m in drawn) > 0
    assert stats["codec_ulaw"] + stats["codec_alaw"] == stats["telephone"]
    assert stats["gain"] == sum(m["gain_db"] != 0 for m in drawn) > 0
    assert stats["mixture_tilt"] == sum(m["mixture_tilt_db_per_octave"] != 0 for m in drawn) > 0
    assert stats["recorded_rir"] == stats["reverberant"] == sum(bool(m["rir_file"]) for m in drawn) > 0
    assert sum(stats["noise_counts"]) == 16
    summary = aug.summary(AugmentOptions(), stats)
    assert set(summary["counts"]) == set(aug.COUNTS) and summary["counts"]["clipped"] == stats["clipped"]


def test_bad_values_are_refused_naming_the_argument(tmp_path, capsys):
    for options, message in (
            (dict(rir_source="disk"), r"rir_source must be one of simulated, files, both. Received: rir_source='disk'"),
            (dict(reverb_target="late"), r"reverb_target must be one of early, dry. Received: reverb_target='late'"),
            (dict(telephone_codec="gsm"), r"telephone_codec must be one of none, ulaw, alaw, both"),
            (dict(several_noises_count=(1, 3)), r"several_noises_count takes whole numbers .* Received: "
                                                r"several_noises_count=1:3"),
            (dict(several_noises_count=(2, 9)), r"<= 8, e.g. 2:3. Received: several_noises_count=2:9"),
            (dict(several_noises_level_db=30), r"several_noises_level_db must be within 0-20 dB"),
            (dict(clip_probability=1.5), r"clip_probability must be a probability between 0 and 1"),
            (dict(clip_level_db=(-6.0, 0.0)), r"clip_level_db takes dB below the peak .* Received: clip_level_db=-6:0"),
            (dict(gain_range_db=(10.0, -10.0)), r"gain_range_db takes dB .* Received: gain_range_db=10:-10"),
            (dict(mixture_tilt_db=0.0), r"mixture_tilt_db is the largest tilt .* Received: mixture_tilt_db=0.0"),
            (dict(telephone_probability=-0.1), r"telephone_probability must be a probability")):
        with pytest.raises(ValueError, match=message):
            AugmentOptions(**options)
    with pytest.raises(ValueError, match=r"telephone_probability needs a sample rate above 6800 Hz"):
        AugmentOptions(telephone_probability=0.5).check_sample_rate(6000)
    AugmentOptions(telephone_probability=0.5).check_sample_rate(8000)
    base = ["dataset", "--demo", "--output", str(tmp_path / "y")]
    for flags, message in ((["--clip-level-db", "-3:2"], "Received: --clip-level-db -3:2"),
                           (["--several-noises-count", "1:2"], "Received: --several-noises-count 1:2"),
                           (["--gain-probability", "2"], "Received: --gain-probability 2.0")):
        assert speech_enhance.main(base + flags) == 2, flags
        assert message in capsys.readouterr().err, flags
    for flags, message in ((["--rir-source", "disk"], "--rir-source: invalid choice: 'disk'"),
                           (["--telephone-codec", "gsm"], "--telephone-codec: invalid choice: 'gsm'")):
        with pytest.raises(SystemExit, match="2"):  # argparse's own refusal of a value outside the choices
            speech_enhance.main(base + flags)
        assert message in capsys.readouterr().err, flags
    assert not (tmp_path / "y").exists()


def test_a_source_stores_recorded_responses_reverberate_examples_mixed_on_the_fly(store_dir):
    # The source store of test_source_store (`--kind sources --rir-dir`), mixed by SourceMixer.
    from mixing.on_the_fly import SourceMixer
    from tfrecord_schema.sources import SourceStore

    store = SourceStore.open(store_dir)
    window = 8064
    rirs = {s.file: s for s in store.segments("train", "rir")}
    assert rirs
    mixer = SourceMixer(store, "train", MixOptions(seed=0), window=window,
                        augment=AugmentOptions(reverb_probability=1.0, rir_source="files"))
    for index in range(4):
        drawn = mixer.draw(index)
        meta = drawn.metadata
        response = store.get(rirs[meta["rir_file"]].key).astype(np.float64)
        direct = int(np.argmax(np.abs(response)))
        aligned = response[max(0, direct - 2):] / np.max(np.abs(response))
        voice_key = next(s.key for s in mixer.sources.voices if s.file == meta["voice_file"])
        voice = store.get(voice_key)[meta["voice_offset"]: meta["voice_offset"] + window].astype(np.float64)
        expected = np.convolve(voice, aligned)[:window]
        reverberant = (drawn.mixture.astype(np.float64) - drawn.noise) / meta["gain"]
        assert np.linalg.norm(reverberant - expected) < 1e-4 * np.linalg.norm(expected), index
        assert meta["rt60"] == pytest.approx(aug.measure_rt60(aligned, store.sample_rate), abs=1e-3)
