"""docs/colab_train.ipynb, executed top to bottom on the CPU by a kernel of this interpreter.

The notebook's Colab-only cells are switched off and its paths pointed at a tiny generated dataset
by a cell inserted after its `parameters` cell, as papermill injects parameters. Any cell that
raises fails the test; the outputs are then checked against what the notebook promises: the
shipped recipe trained, a loss curve, spectrograms, audio players and a model directory that the
predictor loads.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbclient
import nbformat
import numpy as np
import pytest
import soundfile

from beam_pipelines import synthetic
from beam_pipelines.testing import SMALL_CONFIG, write_dataset, write_source_store
from predictor.enhance import resolve_model_dir
from trainer.model_dir import read_model_info

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "docs" / "colab_train.ipynb"
KERNEL = "speech-enhance-test"
SECONDS = 2.0  # of the held-out file


def _kernelspec(jupyter_dir: Path) -> None:
    """A kernel that runs this interpreter with the repository importable: `python3` may name another."""
    spec = jupyter_dir / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": KERNEL, "language": "python",
        "env": {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                "TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}}))


def _held_out_audio(dataset: Path, sample_rate: int) -> tuple[Path, Path]:
    """A noisy/clean pair in the layout `speech-enhance dataset --write-audio test` writes."""
    rng = np.random.default_rng(7)
    n = int(SECONDS * sample_rate)
    clean = synthetic.speech(rng, n, sample_rate, 140.0)
    clean *= 0.3 / np.max(np.abs(clean))
    noise = synthetic.noise(rng, n, sample_rate, "white")
    noisy = clean + noise * np.sqrt(np.mean(clean ** 2) / np.mean(noise ** 2)) / np.sqrt(10.0)  # 5 dB SNR
    files = []
    for kind, signal in (("noisy", noisy), ("clean", clean)):
        folder = dataset / "audio" / "test" / kind
        folder.mkdir(parents=True)
        soundfile.write(folder / "test-00000.wav", signal.astype(np.float32), sample_rate, subtype="FLOAT")
        files.append(folder / "test-00000.wav")
    return files[0], files[1]


def _with_parameters(notebook, values: dict) -> None:
    """Inserts a cell setting `values` after the cell tagged "parameters" (papermill's injection)."""
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{NOTEBOOK} needs exactly one cell tagged 'parameters'; found {len(tagged)}"
    source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    notebook.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))


def _outputs(notebook, kind: str) -> list:
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
            if kind in o.get("data", {})]


def _run_tagged(tag: str, values: dict) -> dict:
    """Runs the notebook's cell tagged `tag` in this process, in the namespace `values`."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    exec(next(c for c in notebook.cells if tag in c.metadata.get("tags", [])).source, values)
    return values


def test_notebook_trains_the_shipped_recipe_and_enhances_a_held_out_file(tmp_path, monkeypatch):
    dataset = tmp_path / "dataset"
    write_dataset(dataset, config=SMALL_CONFIG, splits={"train": 8, "valid": 4})
    noisy, _ = _held_out_audio(dataset, SMALL_CONFIG.sample_rate)
    model_dir, work = tmp_path / "model", tmp_path / "work"
    work.mkdir()
    jupyter = tmp_path / "jupyter"
    _kernelspec(jupyter)
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter))

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    _with_parameters(notebook, {"RECIPE": "shipped:8k", "ON_COLAB": False, "DATASET": str(dataset),
                                "MODEL_DIR": str(model_dir), "EPOCHS": 1, "STEPS_PER_EPOCH": 2,
                                "VALIDATION_STEPS": 1, "BATCH_SIZE": 4})
    client = nbclient.NotebookClient(notebook, kernel_name=KERNEL, timeout=120,
                                     resources={"metadata": {"path": str(work)}})
    cells = list(notebook.cells)
    # Then, in the same kernel: the train cell again, as a "Run all" after a disconnect once training
    # had finished (the model is kept), and which interpreter ran it all.
    train_cell = next(c for c in cells if "train" in c.metadata.get("tags", []))
    rerun, interpreter = (nbformat.v4.new_code_cell(source)
                          for source in (train_cell.source, "import sys; print(sys.executable)"))
    notebook.cells += [rerun, interpreter]
    with client.setup_kernel():
        for index, cell in enumerate(notebook.cells):  # raises CellExecutionError naming the cell and its traceback
            client.execute_cell(cell, index)
    assert "already holds a finished model" in "".join(o.get("text", "") for o in rerun.outputs)
    assert "".join(o.get("text", "") for o in interpreter.outputs).strip() == sys.executable
    notebook.cells = cells

    info = read_model_info(str(model_dir))
    shipped = read_model_info(resolve_model_dir("shipped:8k"))["training"]
    for name in ("architecture", "target", "loss_weighting", "base_filters", "depth", "dropout", "learning_rate",
                 "lr_schedule", "warmup_fraction", "huber_delta", "seed"):
        assert info["training"][name] == shipped[name], name
    # The 8 kHz model.json predates the "loss" option: its "loss" is the description.
    assert info["training"]["loss_description"] == shipped.get("loss_description", shipped["loss"])
    assert (info["training"]["epochs_run"], info["training"]["steps_per_epoch"]) == (1, 2)
    enhanced, rate = soundfile.read(work / "enhanced" / noisy.name)
    assert rate == SMALL_CONFIG.sample_rate and len(enhanced) == int(SECONDS * rate)
    assert not np.allclose(enhanced, soundfile.read(noisy)[0], atol=1e-4)  # the model changed the audio
    # The loss curve and the spectrograms, two players, and the model directory's summary.
    assert len(_outputs(notebook, "image/png")) == 2
    assert sum("<audio" in o["data"].get("text/html", "") for o in _outputs(notebook, "text/html")) == 2
    last = "".join(o.get("text", "") for o in notebook.cells[-1].outputs)
    assert f"speech-enhance predict --model {model_dir}" in last and "target mask" in last


@pytest.mark.parametrize("name, expected", [
    # What each model card's `speech-enhance train` command sets on top of --preset gpu.
    ("shipped:8k", {"target": "mask", "loss_weighting": "magnitude", "base_filters": 24}),
    ("shipped:16k", {"target": "cmask", "loss": "si-sdr+huber", "base_filters": 24, "learning_rate": 0.00025,
                     "epochs": 20}),
])
def test_recipe_cell_reads_each_shipped_models_options(name, expected, monkeypatch, capsys):
    """The cell tagged "recipe" rebuilds each shipped model's TrainConfig from its model.json."""
    monkeypatch.setenv("KERAS_BACKEND", os.environ.get("KERAS_BACKEND", "tensorflow"))  # the cell sets it
    values = _run_tagged("recipe", {"RECIPE": name, "BACKEND": os.environ["KERAS_BACKEND"], "os": os})
    assert values["changed"] == expected
    assert values["recipe"].steps_per_epoch is None and values["recipe"].validation_steps is None
    command = capsys.readouterr().out.split("--preset gpu ")[1].split()
    assert dict(zip(command[::2], command[1::2])) == {f"--{k.replace('_', '-')}": str(v) for k, v in expected.items()}


def test_dataset_cell_mixes_a_source_store_as_the_shipped_model_was_mixed(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", os.environ.get("KERAS_BACKEND", "tensorflow"))  # the recipe cell sets it
    write_source_store(tmp_path / "sources", sample_rate=8000)
    values = _run_tagged("recipe", {"RECIPE": "shipped:8k", "BACKEND": os.environ["KERAS_BACKEND"], "os": os})
    values = _run_tagged("dataset", {**values, "DATASET": str(tmp_path / "sources")})
    drawn = read_model_info(resolve_model_dir("shipped:8k"))["training_data"]["mixing"]
    assert values["is_sources"] and values["mix"].level_range is None
    assert values["mix"].snr_range_db == tuple(drawn["snr_db"]) == (-8.0, 18.0)
    assert values["mix"].loudness_range_dbfs == tuple(drawn["loudness_dbfs"])

    write_source_store(tmp_path / "sources16k", sample_rate=16000, speakers={"train": 1, "valid": 1},
                       noises_per_class=1, seconds=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"is at 16000 Hz, but RECIPE='shipped:8k' trains its model at 8000 Hz\. "
                                         r"Build the dataset with --sample-rate 8000"):
        _run_tagged("dataset", {**values, "DATASET": str(tmp_path / "sources16k")})


def test_notebook_installs_from_the_packages_own_url():
    """The install cell's REPO_URL default is setup.py's `url` (none yet: then both are empty)."""
    values = _run_tagged("parameters", {})
    setup_py = (REPO / "setup.py").read_text(encoding="utf-8")
    url = next((line.split("=", 1)[1].strip().strip('",') for line in setup_py.splitlines()
                if line.strip().startswith("url=")), "")
    assert values["REPO_URL"] == url
    assert values["RECIPE"] in ("shipped:8k", "shipped:16k") and values["ON_COLAB"] is True
