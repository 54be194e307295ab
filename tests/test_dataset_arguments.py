"""`speech-enhance dataset` refuses, before any work and naming the flag, arguments that would build a
wrong dataset or crash the job part way: non-finite or absurd levels, levels that underflow the
store, overlapping input folders, bad worker counts and seeds."""

import os

import pytest

import speech_enhance
from beam_pipelines.launcher import run_dataset
from beam_pipelines.options import DatasetOptions
from dataset_fixtures import make_corpus, small_filesystem
from tfrecord_schema import paths
from tfrecord_schema.config import SpectrogramConfig


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return make_corpus(str(root), speakers=5, utterances=1, noises_per_kind=2)


def refused(capsys, *args: str) -> str:
    """The one-line error of `dataset ARGS` (which must exit with status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        rc = speech_enhance.main(["dataset", *args])
        raise SystemExit(rc)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("flag, value", [("--snr-db", "nan:nan"), ("--snr-db", "0:inf"), ("--snr-db", "-1e300:0"),
                                         ("--noise-level", "inf:inf"), ("--noise-level", "1e300:1e300"),
                                         ("--noise-level", "nan:1"), ("--loudness-dbfs", "-inf:-20")])
def test_non_finite_or_absurd_levels_are_refused_naming_the_flag(corpus, tmp_path, capsys, flag, value):
    voice_dir, noise_dir = corpus
    line = refused(capsys, "--voice-dir", voice_dir, "--noise-dir", noise_dir, "--output", str(tmp_path / "ds"),
                   "--num-examples", "6", "--workers", "1", flag, value)
    assert line.startswith("speech-enhance dataset: error: ") and flag in line, line
    assert not (tmp_path / "ds").exists() and not (tmp_path / "ds.incomplete").exists()


@pytest.mark.parametrize("args, flag", [(["--workers", "0"], "--workers"), (["--workers", "-2"], "--workers"),
                                        (["--seed", "-1"], "--seed"),
                                        (["--split-fractions", "nan,0.1,0.1"], "--split-fractions")])
def test_bad_counts_and_seeds_are_refused_naming_the_flag(corpus, tmp_path, capsys, args, flag):
    voice_dir, noise_dir = corpus
    line = refused(capsys, "--voice-dir", voice_dir, "--noise-dir", noise_dir, "--output", str(tmp_path / "ds"),
                   "--num-examples", "6", *args)
    assert flag in line, line
    assert not (tmp_path / "ds").exists()


def test_the_library_refuses_a_worker_count_below_one(corpus, tmp_path):
    voice_dir, noise_dir = corpus
    opts = DatasetOptions(voice_dir=voice_dir, noise_dir=noise_dir, output=str(tmp_path / "ds"), num_examples=6)
    with pytest.raises(ValueError, match=r"Received: workers=-2"):
        run_dataset(opts, workers=-2)


def test_a_loudness_that_underflows_the_store_is_refused(corpus, tmp_path, capsys):
    voice_dir, noise_dir = corpus
    common = ["--voice-dir", voice_dir, "--noise-dir", noise_dir, "--num-examples", "6", "--workers", "1"]
    line = refused(capsys, *common, "--output", str(tmp_path / "ds"), "--loudness-dbfs", "-400:-400")
    assert "--loudness-dbfs" in line and "float16" in line, line
    assert not (tmp_path / "ds").exists()
    # The bound follows the dtype: float32 holds quieter mixtures than float16.
    f16, f32 = (SpectrogramConfig(dtype=d).quietest_loudness_dbfs for d in ("float16", "float32"))
    assert -110 < f16 < -100 and f32 < f16
    assert speech_enhance.main(["dataset", *common, "--output", str(tmp_path / "quiet"), "--loudness-dbfs", "-95:-90"]) == 0


def test_inspect_verify_reports_all_zero_examples(corpus, tmp_path, capsys, monkeypatch):
    voice_dir, noise_dir = corpus
    # A dataset such as builds made before the level check wrote: every magnitude flushed to zero.
    monkeypatch.setattr(SpectrogramConfig, "quietest_loudness_dbfs", -1000.0, raising=False)
    out = tmp_path / "ds"
    from mixing.options import MixOptions

    info = run_dataset(DatasetOptions(voice_dir=voice_dir, noise_dir=noise_dir, output=str(out), num_examples=10,
                                      mix=MixOptions(loudness_range_dbfs=(-400.0, -400.0))), workers=1).info.to_dict()
    capsys.readouterr()
    assert speech_enhance.main(["inspect", str(out), "--verify", "--examples", "0"]) == 1
    text = capsys.readouterr().out
    assert "healthy" not in text and "DAMAGED" in text
    first = info["splits"]["train"]["shards"][0]
    assert f"{out / first['file']}: {first['num_examples']} of {first['num_examples']} examples hold an all-zero" in text


@pytest.mark.parametrize("spell", [
    lambda v: [v, v + "/"],                       # a trailing slash
    lambda v: [os.path.relpath(v), v],            # relative and absolute
    lambda v: [v, os.path.join(v, "200")],        # a folder and its subfolder
])
def test_one_voice_folder_under_two_spellings_is_refused(corpus, tmp_path, capsys, spell):
    voice_dir, noise_dir = corpus
    first, second = spell(voice_dir)
    line = refused(capsys, "--voice-dir", first, "--voice-dir", second, "--noise-dir", noise_dir,
                   "--output", str(tmp_path / "ds"), "--num-examples", "6", "--workers", "1")
    assert f"--voice-dir {first!r} and --voice-dir {second!r}" in line and "read twice" in line, line
    assert not (tmp_path / "ds").exists()


def test_one_folder_as_voice_and_noise_is_refused(corpus, tmp_path, capsys):
    voice_dir, noise_dir = corpus
    root = os.path.dirname(voice_dir)
    for voices, noises in ((voice_dir, voice_dir + "/"), (voice_dir, root)):
        line = refused(capsys, "--voice-dir", voices, "--noise-dir", noise_dir, "--noise-dir", noises,
                       "--output", str(tmp_path / "ds"), "--num-examples", "6", "--workers", "1")
        assert f"--voice-dir {voices!r} and --noise-dir {noises!r}" in line and "as voice and as noise" in line, line


def test_the_space_refusal_gives_small_sizes_in_a_unit_that_fits(corpus, tmp_path, capsys, monkeypatch):
    voice_dir, noise_dir = corpus
    disk = tmp_path / "disk"
    with small_filesystem(disk, "256k") as mounted:
        if not mounted:  # not root: the same free space, reported by an injected figure
            monkeypatch.setattr(paths, "free_bytes", lambda path: 256 * 1024)
        line = refused(capsys, "--voice-dir", voice_dir, "--noise-dir", noise_dir, "--output", str(disk / "ds"),
                       "--num-examples", "20", "--workers", "1")
    assert "0.0 GiB" not in line, line
    assert " MiB but only " in line and " KiB are free" in line and "--yes" in line, line
    assert paths.format_bytes(512) == "512 bytes" and paths.format_bytes(3 * 2**30) == "3.0 GiB"


def test_evaluate_mixture_arguments_are_refused_naming_the_flag(corpus, tmp_path, capsys):
    voice_dir, noise_dir = corpus
    rc = speech_enhance.main(["evaluate", "--voice-dir", voice_dir, "--noise-dir", noise_dir, "--output",
                              str(tmp_path / "ev"), "--num-mixtures", "1", "--no-pesq", "--no-stoi", "--duration", "nan"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and "--duration nan" in line, line
    # The library names its argument (the command maps it to --seed, as --duration above).
    from predictor.evaluation.items import make_mixtures

    with pytest.raises(ValueError, match=r"seed must be a non-negative integer. Received: seed=-1"):
        make_mixtures(voice_dir, noise_dir, num_mixtures=1, seed=-1)
