"""The installed command line, end to end: demo corpus -> dataset -> inspect."""

import json
import os
import subprocess
import sys

import pytest

import speech_enhance


def test_demo_dataset_and_inspect(tmp_path, capsys):
    out = tmp_path / "data" / "demo"
    rc = speech_enhance.main(["dataset", "--demo", "--output", str(out), "--num-examples", "30", "--workers", "1",
                              "--snr-db", "-5:15", "--shard-size-mb", "2", "--write-audio", "test"])
    assert rc == 0
    with open(out / "dataset_info.json") as f:
        info = json.load(f)
    assert {k: v["num_examples"] for k, v in info["splits"].items()} == {"train": 24, "valid": 3, "test": 3}
    assert info["arguments"]["snr_db"] == [-5.0, 15.0]
    assert (tmp_path / "data" / "demo_corpus" / "noises" / "classes.tsv").exists()
    assert len(os.listdir(out / "audio" / "test" / "clean")) == 3
    capsys.readouterr()
    assert speech_enhance.main(["inspect", str(out), "--examples", "2", "--json", str(tmp_path / "s.json")]) == 0
    text = capsys.readouterr().out
    assert "train" in text and "bytes/ex" in text and "realised SNR" in text
    assert (out / "inspect.png").stat().st_size > 10_000
    with open(tmp_path / "s.json") as f:
        assert json.load(f)["splits"]["train"]["examples"] == 24


def test_cli_reports_bad_arguments_clearly(tmp_path, capsys):
    assert speech_enhance.main(["dataset", "--output", str(tmp_path / "x")]) == 2
    assert "needs --voice-dir and --noise-dir" in capsys.readouterr().err
    assert speech_enhance.main(["inspect", str(tmp_path)]) == 2
    assert "holds no dataset_info.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        speech_enhance.main(["dataset", "--output", "x", "--noise-level", "abc"])


def test_console_script_help():
    # The installed console script sits beside the interpreter (the virtualenv's bin/).
    script = os.path.join(os.path.dirname(sys.executable), "speech-enhance")
    assert os.path.exists(script), f"console script not installed at {script}: pip install -e . first"
    result = subprocess.run([script, "dataset", "--help"], capture_output=True, text=True, check=True)
    assert "--voice-dir" in result.stdout and "DataflowRunner" in result.stdout
