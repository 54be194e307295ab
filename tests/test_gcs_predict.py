"""`predict` and `evaluate` on gs:// folders, against a real local GCS emulator (conftest.py's `gcs`).

The same files are processed from the bucket and from a local folder with the same model, and the
results must agree: the bucket path adds listing, streamed reading and atomic uploads, nothing else.
"""

import io
import json
import logging
import os

import keras
import numpy as np
import pytest
import soundfile

import speech_enhance
from beam_pipelines import synthetic
from dataset_fixtures import make_corpus
from predictor.evaluation.items import make_mixtures
from predictor.enhance import Enhancer
from predictor.folders import enhance_files
from tfrecord_schema import paths, remote_fs
from tfrecord_schema.config import SpectrogramConfig
from trainer.model_dir import save_model_dir

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

CONFIG = SpectrogramConfig()
OUTPUTS = ["a.wav", "sub/b.flac"]  # what the good inputs give; sub/corrupt.wav fails


def upload_tree(local: str, remote: str) -> None:
    for rel in paths.list_files(local):
        paths.upload_atomic(os.path.join(local, rel), paths.join(remote, rel))


def read(path: str) -> tuple[np.ndarray, int]:
    """Samples float32 [samples, channels] and rate of a local or remote file."""
    y, rate = soundfile.read(io.BytesIO(paths.read_bytes(path)), dtype="float32", always_2d=True)
    return y, rate


def generation(path: str) -> int:
    """The object's generation: it changes whenever the object is written again."""
    from apache_beam.io.gcp import gcsio

    bucket, name = path[len("gs://"):].split("/", 1)
    return gcsio.GcsIO().client.bucket(bucket).get_blob(name).generation


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny conv net with random weights: its output depends on its input, bin by bin and in time."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((*CONFIG.shape, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Conv2D(1, 3, padding="same", activation="tanh")(h)
    return save_model_dir(keras.Model(inputs, outputs), str(tmp_path_factory.mktemp("tiny")), config=CONFIG,
                          target="noise")


@pytest.fixture(scope="module")
def remote_model_dir(gcs, model_dir):
    """The same model directory, copied into the bucket."""
    remote = gcs.url("models/tiny")
    upload_tree(model_dir, remote)
    return remote


@pytest.fixture(scope="module")
def enhancer(model_dir):
    return Enhancer.from_model_dir(model_dir, batch_size=4)


@pytest.fixture(scope="module")
def inputs(gcs, tmp_path_factory):
    """A 16 kHz stereo float wav, an 11.025 kHz 24-bit flac in a sub-folder, a corrupt wav and a text
    file, locally and in the bucket."""
    root = str(tmp_path_factory.mktemp("predict_in"))
    rng = np.random.default_rng(0)
    voice = synthetic.speech(rng, int(2.6 * 16000), 16000, 140.0)
    noisy = voice + 0.05 * synthetic.noise(rng, int(2.6 * 16000), 16000, "traffic")[: voice.shape[0]]
    stereo = np.stack([noisy, 0.6 * noisy[::-1]], axis=1).astype(np.float32)
    soundfile.write(os.path.join(root, "a.wav"), stereo, 16000, subtype="FLOAT")
    os.makedirs(os.path.join(root, "sub"))
    voice = synthetic.speech(rng, int(3.1 * 11025), 11025, 190.0)
    noisy = voice + 0.05 * synthetic.noise(rng, int(3.1 * 11025), 11025, "vacuum")[: voice.shape[0]]
    soundfile.write(os.path.join(root, "sub", "b.flac"), noisy.astype(np.float32), 11025, subtype="PCM_24")
    with open(os.path.join(root, "sub", "corrupt.wav"), "wb") as f:
        f.write(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    with open(os.path.join(root, "notes.txt"), "w") as f:
        f.write("not audio: ignored\n")
    remote = gcs.url("predict/in")
    upload_tree(root, remote)
    return root, remote


def test_predict_bucket_to_bucket_matches_a_local_run(model_dir, remote_model_dir, inputs, gcs, tmp_path, monkeypatch,
                                                      capsys):
    local_in, remote_in = inputs
    remote_out, local_out = gcs.url("predict/out"), str(tmp_path / "out")
    scratch = tmp_path / "scratch"  # where remote outputs are staged before their upload
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    args = ["predict", "--batch-size", "4"]
    assert speech_enhance.main(args + ["--model", remote_model_dir, "--input", remote_in, "--output", remote_out]) == 1
    printed = capsys.readouterr().out
    assert "2 written, 0 skipped (output exists), 1 failed of 3 files" in printed
    assert f"failures and their reasons: {remote_out}/failures.jsonl" in printed
    assert speech_enhance.main(args + ["--model", model_dir, "--input", local_in, "--output", local_out]) == 1

    # Only finished files under their final names: no temporaries in the bucket or on the local disk.
    assert paths.list_files(remote_out) == ["a.wav", "failures.jsonl", "sub/b.flac"]
    assert list(scratch.iterdir()) == []
    for rel in OUTPUTS:
        y, rate = read(paths.join(remote_out, rel))
        source = soundfile.info(os.path.join(local_in, rel))
        assert (y.shape, rate) == ((source.frames, source.channels), source.samplerate), rel
        expected, _ = read(os.path.join(local_out, rel))
        np.testing.assert_allclose(y, expected, rtol=0, atol=1e-6, err_msg=rel)
        assert np.max(np.abs(y - read(os.path.join(local_in, rel))[0])) > 1e-3  # the model did change it
    failures = [json.loads(line) for line in paths.read_text(paths.join(remote_out, "failures.jsonl")).splitlines()]
    assert [(f["input"], f["output"], f["reason"]) for f in failures] == [
        (f"{remote_in}/sub/corrupt.wav", f"{remote_out}/sub/corrupt.wav", "unreadable")]


def test_a_rerun_skips_what_is_done_and_redoes_a_deleted_output(enhancer, inputs, gcs, caplog):
    _, remote_in = inputs
    out = gcs.url("predict/rerun")
    first = enhance_files(enhancer, remote_in, out)
    assert (first.written, first.skipped, len(first.failures)) == (2, 0, 1)
    before = {rel: (generation(paths.join(out, rel)), read(paths.join(out, rel))[0]) for rel in OUTPUTS}
    windows = enhancer.windows_run
    with caplog.at_level(logging.INFO, logger="predictor"):
        second = enhance_files(enhancer, remote_in, out)
    assert (second.written, second.skipped, len(second.failures)) == (0, 2, 1)
    assert any("skipping 2 files whose output exists" in r.getMessage() for r in caplog.records)
    assert enhancer.windows_run == windows  # the model never ran
    assert {rel: generation(paths.join(out, rel)) for rel in OUTPUTS} == {rel: g for rel, (g, _) in before.items()}

    paths.delete_files([paths.join(out, "sub/b.flac")])  # as if the first run had stopped before it
    # Small blocks: the flac is read from the bucket's reader, and its output written, in many pieces.
    third = enhance_files(enhancer, remote_in, out, block_seconds=0.4)
    assert (third.written, third.skipped) == (1, 1)
    assert enhancer.windows_run > windows
    assert generation(paths.join(out, "a.wav")) == before["a.wav"][0]
    np.testing.assert_allclose(read(paths.join(out, "sub/b.flac"))[0], before["sub/b.flac"][1], rtol=0, atol=1e-6)
    assert not [f for f in paths.list_files(out) if paths.final_name(f)]


def test_bucket_inputs_are_literal_and_never_overwritten(enhancer, inputs, gcs, tmp_path):
    local_in, remote_in = inputs
    source = gcs.url("safety/in")
    paths.upload_atomic(os.path.join(local_in, "a.wav"), paths.join(source, "x.wav"))
    for output in (source, source + "/"):
        with pytest.raises(ValueError, match="output_dir must not be the input folder"):
            enhance_files(enhancer, source, output)
    with pytest.raises(ValueError, match="output_dir must not be the input folder"):
        enhance_files(enhancer, paths.join(source, "x.wav"), source)
    with pytest.raises(ValueError, match="never a glob pattern.*input='gs://.*/\\*\\.wav'"):
        enhance_files(enhancer, paths.join(remote_in, "*.wav"), str(tmp_path / "o"))
    with pytest.raises(FileNotFoundError, match="neither a folder prefix with objects below it nor one object"):
        enhance_files(enhancer, gcs.url("safety/nothing"), str(tmp_path / "o"))
    assert paths.list_files(source) == ["x.wav"]

    # An output prefix inside the input prefix is fine, and its files are never taken as inputs.
    inside = paths.join(source, "denoised")
    assert enhance_files(enhancer, source, inside).written == 1
    again = enhance_files(enhancer, source, inside)
    assert (again.total, again.skipped) == (1, 1)
    assert paths.list_files(source) == ["denoised/x.wav", "x.wav"]

    # One object in, a local folder out.
    one = enhance_files(enhancer, paths.join(remote_in, "sub", "b.flac"), str(tmp_path / "one"))
    assert one.written == 1 and os.listdir(tmp_path / "one") == ["b.flac"]


@pytest.mark.parametrize("client", ["beam", "tensorflow"])
def test_block_reading_streams_through_either_remote_client(inputs, monkeypatch, client):
    # soundfile seeks (header, then blocks): both clients' readers must allow it and give the local samples.
    from predictor.audio_io import AudioReader

    local_in, remote_in = inputs
    monkeypatch.setenv(remote_fs.REMOTE_FS_VARIABLE, client)
    for rel in OUTPUTS:
        with AudioReader(paths.join(remote_in, rel)) as reader:
            blocks = [block for block, _ in reader.blocks(1500)]
        assert len(blocks) > 10
        expected, _ = soundfile.read(os.path.join(local_in, rel), dtype="float32", always_2d=True)
        np.testing.assert_array_equal(np.concatenate(blocks), expected)


def make_pairs(root: str) -> tuple[str, str]:
    """Noisy/clean pairs at three SNRs in a sub-folder, with a classes.tsv naming the class of two."""
    rng = np.random.default_rng(1)
    noisy_dir, clean_dir = os.path.join(root, "noisy"), os.path.join(root, "clean")
    for d in (noisy_dir, clean_dir):
        os.makedirs(os.path.join(d, "set"))
    for i, (snr, kind) in enumerate(((-3.0, "traffic"), (4.0, "vacuum"), (11.0, "clock"))):
        clean = 0.5 * synthetic.speech(rng, int(1.6 * 8000), 8000, 120.0 + 40 * i)
        noise = synthetic.noise(rng, int(1.6 * 8000), 8000, kind)[: clean.shape[0]]
        noise *= np.sqrt(np.sum(clean ** 2) / (np.sum(noise ** 2) * 10 ** (snr / 10)))
        soundfile.write(os.path.join(clean_dir, "set", f"{i}.flac"), clean.astype(np.float32), 8000)
        soundfile.write(os.path.join(noisy_dir, "set", f"{i}.wav"), (clean + noise).astype(np.float32), 8000,
                        subtype="FLOAT")
    with open(os.path.join(noisy_dir, "classes.tsv"), "w") as f:
        f.write("file\tclass\nset/0.wav\ttraffic\nset/1.wav\tvacuum\n")
    return noisy_dir, clean_dir


def test_evaluate_bucket_pairs_gives_the_local_numbers(model_dir, remote_model_dir, gcs, tmp_path, capsys):
    noisy_dir, clean_dir = make_pairs(str(tmp_path))
    remote = gcs.url("evaluate/pairs")
    upload_tree(noisy_dir, paths.join(remote, "noisy"))
    upload_tree(clean_dir, paths.join(remote, "clean"))
    args = ["evaluate", "--systems", "noisy", "tiny", "wiener", "oracle", "--no-reference-recipe", "--examples", "2",
            "--save-audio"]
    local_report, remote_report = str(tmp_path / "report"), paths.join(remote, "report")
    assert speech_enhance.main(args + ["--model", f"tiny={model_dir}", "--noisy-dir", noisy_dir, "--clean-dir",
                                       clean_dir, "--output", local_report]) == 0
    capsys.readouterr()
    # The model from the bucket too, named after its folder ("tiny").
    assert speech_enhance.main(args + ["--model", remote_model_dir, "--noisy-dir", paths.join(remote, "noisy"),
                                       "--clean-dir", paths.join(remote, "clean"), "--output", remote_report]) == 0
    assert "## Overall" in capsys.readouterr().out

    with open(os.path.join(local_report, "results.json")) as f:
        local = json.load(f)
    bucket = json.loads(paths.read_text(paths.join(remote_report, "results.json")))
    assert bucket["source"]["noisy_dir"] == paths.join(remote, "noisy")
    assert bucket["aggregates"] == local["aggregates"]
    for key in ("id", "snr_db", "snr_bin", "noise_class", "seconds", "source", "scores"):
        assert [it[key] for it in bucket["items"]] == [it[key] for it in local["items"]], key
    # Classes from the bucket's classes.tsv, and from the folder name where it has no entry.
    assert [it["noise_class"] for it in bucket["items"]] == ["traffic", "vacuum", "set"]
    assert np.isfinite(bucket["aggregates"]["overall"]["tiny"]["pesq"])
    listed = paths.list_files(remote_report)
    assert {"results.json", "results.md", "si_sdri_vs_snr.png", "examples.png"} <= set(listed)
    assert len([f for f in listed if f.startswith("audio/") and f.endswith(".wav")]) == 2 * 5
    assert not [f for f in listed if paths.final_name(f)]
    assert paths.read_bytes(paths.join(remote_report, "si_sdri_vs_snr.png"))[:8] == b"\x89PNG\r\n\x1a\n"


def test_mixtures_from_bucket_folders_equal_the_local_ones(gcs, tmp_path):
    voice_dir, noise_dir = make_corpus(str(tmp_path), speakers=2, utterances=2, noises_per_kind=1)
    remote = gcs.url("evaluate/mix")
    upload_tree(voice_dir, paths.join(remote, "voices"))
    upload_tree(noise_dir, paths.join(remote, "noises"))
    kwargs = dict(snrs=(0.0, 5.0), num_mixtures=2, duration=1.2, sample_rate=8000, seed=3)
    local = make_mixtures(voice_dir, noise_dir, **kwargs)
    bucket = make_mixtures(paths.join(remote, "voices"), paths.join(remote, "noises"), **kwargs)
    assert [(it.item_id, it.noise_class, it.source) for it in bucket] == [
        (it.item_id, it.noise_class, it.source) for it in local]
    assert {it.noise_class for it in bucket} <= {"clock", "alarm", "vacuum", "traffic"}  # from classes.tsv
    for a, b in zip(bucket, local):
        np.testing.assert_array_equal(a.noisy, b.noisy)
        np.testing.assert_array_equal(a.clean, b.clean)
