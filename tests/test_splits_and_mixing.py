import numpy as np
import pytest

from beam_pipelines import planning
from mixing.levels import PEAK_LIMIT, active_level, blend, mix_at_snr, peak_limited_gain
from beam_pipelines.splits import (assign_groups, noise_class_of, noise_classes, parse_fractions, read_class_table,
                                   speaker_of)
from tfrecord_schema.config import SpectrogramConfig


def test_speaker_and_class_names():
    assert speaker_of("train-clean-100/19/198/19-198-0001.flac") == "19"
    assert speaker_of("alice/take1.wav") == "alice"
    assert speaker_of("solo.wav") == "solo"
    table = read_class_table("file\tclass\nn1.wav\tcrowd\n")
    assert noise_class_of("n1.wav", table) == "crowd"
    assert noise_class_of("dogs/bark.wav", {}) == "dogs"
    assert noise_class_of("x.wav", {}) == "unknown"
    esc = read_class_table("filename,fold,target,category,esc10,src_file,take\n1-100032-A-0.wav,1,0,dog,True,100032,A\n")
    assert esc == {"1-100032-A-0.wav": "dog"}
    assert noise_class_of("audio/1-100032-A-0.wav", esc) == "dog"  # ESC-50 lists base names
    # Comments, blank lines, padding and "./" are what people write in a hand-made classes.tsv.
    assert read_class_table("# made by hand\n\nfile\tclass\n ./a/b.wav \t rain \nc.wav\twind\n") == {
        "a/b.wav": "rain", "c.wav": "wind"}


def test_noise_classes_take_the_nearest_table_then_the_folder(tmp_path):
    (tmp_path / "sub" / "deep").mkdir(parents=True)
    (tmp_path / "meta").mkdir()
    (tmp_path / "classes.tsv").write_text("file\tclass\ntop.wav\thum\nsub/listed.wav\tfan\n")
    (tmp_path / "sub" / "classes.tsv").write_text("deep/x.wav\tpink\n")
    (tmp_path / "meta" / "esc50.csv").write_text("filename,category\ntop.wav,ignored\n")  # classes.tsv comes first
    rels = ["top.wav", "sub/listed.wav", "sub/deep/x.wav", "sub/deep/y.wav", "loose.wav"]
    assert noise_classes(str(tmp_path), rels) == {
        "top.wav": "hum", "sub/listed.wav": "fan", "sub/deep/x.wav": "pink", "sub/deep/y.wav": "deep",
        "loose.wav": "unknown"}


def test_split_assignment_is_deterministic_disjoint_and_covers_every_split():
    speakers = [str(i) for i in range(7)]
    a = assign_groups(speakers, (0.8, 0.1, 0.1), salt="voice")
    b = assign_groups(list(reversed(speakers)), (0.8, 0.1, 0.1), salt="voice")
    assert a == b
    assert set(a.values()) == {"train", "valid", "test"}
    files = [f"n{i}.wav" for i in range(40)]
    classes = {f: ("crowd", "water", "bell", "wind")[i % 4] for i, f in enumerate(files)}
    split = assign_groups(files, (0.8, 0.1, 0.1), salt="noise", strata=classes)
    assert sorted(split.values()).count("test") == 4
    for cls in set(classes.values()):  # ten files per class: each class reaches every split
        assert {split[f] for f in files if classes[f] == cls} == {"train", "valid", "test"}
    with pytest.raises(ValueError, match="three non-negative numbers"):
        parse_fractions("0.8,0.2")


def test_blend_hits_level_records_snr_and_never_clips():
    rng = np.random.default_rng(0)
    t = np.arange(8064) / 8000
    voice = (0.5 * np.sin(2 * np.pi * 200 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)
    noise = rng.standard_normal(8064).astype(np.float32)
    level, fraction = active_level(voice, 8000)
    assert 0.4 < fraction < 0.6  # half the window is active
    out = blend(voice, noise, 0.5, -3.0, level)  # a loudness that would clip
    assert np.max(np.abs(out.mixture)) <= 0.99 + 1e-6
    np.testing.assert_allclose(out.mixture, out.clean + out.noise, atol=1e-6)
    assert np.sqrt(np.mean(out.noise ** 2)) / active_level(out.clean, 8000)[0] == pytest.approx(0.5, rel=1e-3)
    measured = 10 * np.log10(np.sum(out.clean.astype(np.float64) ** 2) / np.sum(out.noise.astype(np.float64) ** 2))
    assert out.snr_db == pytest.approx(measured, abs=1e-4)


def test_mix_at_snr_hits_the_snr_exactly_and_shares_the_peak_limit():
    rng = np.random.default_rng(1)
    clean = (0.3 * rng.standard_normal(8000)).astype(np.float32)
    noise = rng.standard_normal(8000).astype(np.float32)
    for snr in (-5.0, 20.0):
        out_clean, mixture = mix_at_snr(clean, noise, snr)
        residual = (mixture - out_clean).astype(np.float64)
        assert 10 * np.log10(np.sum(out_clean.astype(np.float64) ** 2) / np.sum(residual ** 2)) == pytest.approx(
            snr, abs=1e-3)
        assert np.max(np.abs(mixture)) <= PEAK_LIMIT + 1e-6
    _, loud = mix_at_snr(clean, noise, -5.0)
    assert np.max(np.abs(loud)) == pytest.approx(PEAK_LIMIT, rel=1e-6)  # scaled down to the limit, not below
    quiet_clean, quiet = mix_at_snr(0.01 * clean, 0.01 * noise, 20.0)
    np.testing.assert_array_equal(quiet_clean, 0.01 * clean)  # no limit needed: the clean is untouched
    assert peak_limited_gain(np.array([0.5, -2.0], np.float32), 1.0) == pytest.approx(PEAK_LIMIT / 2.0)
    assert peak_limited_gain(np.array([0.5], np.float32), 1.5) == 1.5


def test_chunk_plan_sizes_shards_within_bound():
    config = SpectrogramConfig()
    per = planning.bytes_per_example(config)
    specs = planning.plan_chunks({"train": 1000, "valid": 100, "test": 0}, config, max_shard_bytes=300 * per, chunk_size=64)
    shards = {}
    for s in specs:
        shards.setdefault((s.split, s.shard), 0)
        shards[(s.split, s.shard)] += s.count
        assert s.count <= 64
    assert sum(v for (split, _), v in shards.items() if split == "train") == 1000
    assert max(shards.values()) <= 300
    assert {s.shard_file for s in specs if s.split == "valid"} == {"valid.tfrecord-00000-of-00001"}
    assert [s.start for s in specs if s.split == "train"][:3] == [0, 63, 126]


def test_the_level_arithmetic_is_numpys_bit_for_bit():
    """`percentile95` and `rms` replace np.percentile and np.mean in the mixing's hot path: the same
    bits, so datasets built before stay reproducible."""
    from mixing.levels import percentile95, rms

    rng = np.random.default_rng(0)
    for trial in range(2000):
        n = int(rng.integers(1, 700))
        values = rng.random(n) ** rng.uniform(1, 8)
        if trial % 4 == 0:
            values = np.round(values, 2)  # ties
        assert percentile95(values) == float(np.percentile(values, 95))
        x = rng.standard_normal(n).astype(np.float32)
        assert rms(x) == float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
