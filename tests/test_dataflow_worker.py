"""Ready for Dataflow, as far as can be checked offline.

A Dataflow worker gets Beam, then `pip install` of the sdist that Beam's stager builds from
`--setup_file`, and unpickles the job's DoFns in a fresh interpreter (no `--save_main_session`). Here:
every DoFn and the options round-trip through each pickler; the job runs with each of Beam's pickle
libraries on worker processes of their own; and the package, built by Beam's own stager code, is
installed into a fresh virtualenv that holds only apache-beam and the core requirements, where the
job runs (decode, chunks, shards) and writes the same shards as here.
"""

import json
import os
import pickle
import subprocess
import sys
import time

import apache_beam
import pytest

from beam_pipelines.launcher import run_dataset
from beam_pipelines.pipeline import AssembleShard, DecodeSource, WriteChunk, check_sources, finalize, select
from beam_pipelines.options import DatasetOptions
from mixing.options import MixOptions
from beam_pipelines.planning import ChunkSpec, Plan, WorkItem
from dataset_fixtures import add_bad_inputs, make_corpus
from tfrecord_schema.config import SpectrogramConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARD = int(0.6 * 2**20)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    voice_dir, noise_dir = make_corpus(str(root), speakers=5, utterances=1, noises_per_kind=2)
    add_bad_inputs(voice_dir, noise_dir)
    return voice_dir, noise_dir


def options(corpus, output, **kw) -> DatasetOptions:
    return DatasetOptions(voice_dir=corpus[0], noise_dir=corpus[1], output=str(output), num_examples=kw.pop("n", 18),
                          max_shard_bytes=SHARD, chunk_size=3, **kw)


def shards(folder) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(folder)):
        if ".tfrecord-" in name:
            with open(os.path.join(folder, name), "rb") as f:
                out[name] = f.read()
    return out


def picklers():
    import cloudpickle
    from apache_beam.internal import pickler

    def beam_pickler(dumps_or_loads):
        def call(value):
            previous = pickler.desired_pickle_lib
            pickler.set_library("cloudpickle")
            try:
                return getattr(pickler, dumps_or_loads)(value)
            finally:
                pickler.desired_pickle_lib = previous
        return call

    return {"pickle": (pickle.dumps, pickle.loads), "cloudpickle": (cloudpickle.dumps, cloudpickle.loads),
            "beam": (beam_pickler("dumps"), beam_pickler("loads"))}


def test_dofns_options_and_functions_pickle_by_reference(tmp_path):
    opts = DatasetOptions(voice_dir="gs://b/voices", noise_dir="/data/noises", output=str(tmp_path / "o"),
                          num_examples=50, config=SpectrogramConfig(sample_rate=16000, dtype="float32"),
                          mix=MixOptions(seed=3, level_range=None, snr_range_db=(-5.0, 15.0)),
                          write_audio=("test",), compression="GZIP")
    plan = Plan(voices=[{"file": "a/1-2-3.flac", "path": "gs://b/voices/a/1-2-3.flac", "group": "1", "split": "train"}],
                noises=[], work=[WorkItem("train", 0, 2, 0, 10, 4, 1, 3)], counts={"train": 5}, classes_source="x")
    objects = [opts, opts.config, opts.mix, plan, ChunkSpec("train", 0, 2, 1, 3, 10, 5),
               WorkItem("train", 0, 2, 0, 10, 4, 1, 3),
               DecodeSource("voice", "/w", opts.config), WriteChunk(opts, "/w", "/b"),
               AssembleShard("/b")]
    for name, (dumps, loads) in picklers().items():
        for obj in objects:
            data = dumps(obj)
            # By reference to the installed package, never by value from __main__: a worker without
            # the launcher's main session can load it.
            assert b"__main__" not in data, (name, obj)
            back = loads(data)
            assert type(back) is type(obj) and vars(back) == vars(obj), (name, obj)
        for function in (select, check_sources, finalize):
            assert loads(dumps(function)) is function, (name, function)


def test_job_runs_with_each_pickle_library_on_worker_processes(corpus, tmp_path):
    # Two workers: the DoFns travel pickled to SDK worker processes of their own (fresh interpreters).
    reference = run_dataset(options(corpus, tmp_path / "inproc"), workers=1).info.to_dict()
    assert sum(s["num_examples"] for s in reference["splits"].values()) == 18
    for library in ("cloudpickle", "default"):
        out = tmp_path / library
        run_dataset(options(corpus, out), workers=2, beam_args=[f"--pickle_library={library}"])
        assert shards(out) == shards(tmp_path / "inproc"), library


def _run(cmd, **kw) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout


def test_package_from_setup_file_runs_the_job_in_a_bare_worker_environment(corpus, tmp_path):
    """About 25 s, most of it pip installing apache-beam into the fresh virtualenv."""
    from apache_beam.runners.portability.stager import Stager

    started = time.perf_counter()
    # The sdist exactly as `--setup_file ./setup.py` makes it (`python -m build --sdist`, or
    # `setup.py sdist` where `build` is not installed).
    sdist = Stager._build_setup_package(os.path.join(REPO_ROOT, "setup.py"), str(tmp_path / "staged"))
    assert sdist.endswith(".tar.gz")
    venv = tmp_path / "worker-venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # As Beam's worker container: the SDK first, then `pip install` of the staged package.
    _run(pip + [f"apache-beam=={apache_beam.__version__}"], env=env, cwd=tmp_path)
    _run(pip + [sdist], env=env, cwd=tmp_path)
    installed = {line.split("==")[0].split(" @ ")[0].lower() for line in
                 _run([python, "-m", "pip", "freeze"], env=env, cwd=tmp_path).split()}
    assert "speech-enhance" in installed and "apache-beam" in installed
    assert not installed & {"tensorflow", "tensorflow-cpu", "keras", "matplotlib", "dask", "distributed", "gcsfs"}

    # The worker-side work (decode, chunks, shards) on FnApiRunner in that environment, from a
    # folder outside the checkout so that the installed package is the one imported.
    out = tmp_path / "worker-out"
    script = (
        "import json, sys, beam_pipelines\n"
        f"assert beam_pipelines.__file__.startswith({str(venv)!r}), beam_pipelines.__file__\n"
        "from beam_pipelines.launcher import run_dataset\nfrom beam_pipelines.options import DatasetOptions\n"
        "opts = DatasetOptions(**json.loads(sys.argv[1]))\n"
        "info = run_dataset(opts, workers=1).info.to_dict()\n"
        "print(json.dumps(info['rejects']))\n")
    kwargs = {"voice_dir": corpus[0], "noise_dir": corpus[1], "output": str(out), "num_examples": 18,
              "max_shard_bytes": SHARD, "chunk_size": 3}
    rejects = json.loads(_run([python, "-c", script, json.dumps(kwargs)], env=env, cwd=tmp_path).splitlines()[-1])
    assert rejects["count"] == 8

    here = tmp_path / "here"
    run_dataset(options(corpus, here), workers=1)
    assert shards(out) == shards(here) and len(shards(here)) >= 3
    print(f"bare worker environment: {time.perf_counter() - started:.1f} s")
