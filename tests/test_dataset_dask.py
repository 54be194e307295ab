"""The dataset job on Beam's DaskRunner, against a real dask.distributed cluster of two worker
processes: the same shards, byte for byte, and the same dataset_info as on FnApiRunner."""

import json
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("distributed", reason="DaskRunner needs dask.distributed: pip install -e '.[dask]'")

import speech_enhance  # noqa: E402
from dataset_fixtures import add_bad_inputs, make_corpus, read_tree  # noqa: E402
from tfrecord_schema import paths  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster():
    import dask
    from distributed import LocalCluster

    # Worker processes are spawned, never forked: a forked child of a process that has used gcsfs
    # (other test modules do) can hang.
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}), LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None) as c:
        yield c


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    voice_dir, noise_dir = make_corpus(str(root), speakers=6, utterances=1, noises_per_kind=2)
    bad = add_bad_inputs(voice_dir, noise_dir)
    return voice_dir, noise_dir, bad


def build(corpus, output, *extra) -> int:
    voice_dir, noise_dir, _ = corpus
    return speech_enhance.main(["dataset", "--voice-dir", voice_dir, "--noise-dir", noise_dir, "--output", str(output),
                                "--num-examples", "24", "--shard-size-mb", "0.6", "--chunk-size", "3",
                                "--write-audio", "test", *extra])


def comparable_info(data: bytes) -> dict:
    info = json.loads(data)
    del info["build_seconds"], info["arguments"]
    return info


def test_dask_build_equals_fnapi_build(cluster, corpus, tmp_path, caplog):
    from distributed import Client, get_task_stream

    # Same folder name on both runners: dataset_info names its dataset.
    assert build(corpus, tmp_path / "fnapi" / "ds", "--workers", "1") == 0
    with Client(cluster.scheduler_address, set_as_default=False) as client:
        assert len(client.nthreads()) == 2
        with caplog.at_level("INFO"), get_task_stream(client) as stream:
            assert build(corpus, tmp_path / "dask" / "ds", "--runner", "DaskRunner",
                         "--dask_client_address", cluster.scheduler_address) == 0
    # The work was spread over both worker processes.
    assert len({task["worker"] for task in stream.data}) == 2
    # Progress came back from the workers (Beam's metrics do not on DaskRunner).
    assert "wrote train.tfrecord-00000-of-" in caplog.text

    expected, got = read_tree(tmp_path / "fnapi" / "ds"), read_tree(tmp_path / "dask" / "ds")
    assert sorted(got) == sorted(expected)
    shards = [name for name in expected if ".tfrecord-" in name]
    assert len(shards) > 3
    for name in expected:
        if name == "dataset_info.json":
            assert comparable_info(got[name]) == comparable_info(expected[name])
        else:
            assert got[name] == expected[name], name
    info = comparable_info(got["dataset_info.json"])
    assert info["rejects"]["count"] == len(corpus[2]) == len(got["rejects.jsonl"].splitlines())
    assert sum(s["num_examples"] for s in info["splits"].values()) == 24
    # Nothing of the cluster's run left behind: no scratch, no temporaries, no build folder.
    assert not [n for n in got if n.startswith("_work") or paths.final_name(n)]
    assert os.listdir(tmp_path / "dask") == ["ds"]


def test_dask_without_an_address_starts_and_closes_a_local_cluster(corpus, tmp_path):
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    assert build(corpus, tmp_path / "local", "--runner", "DaskRunner", "--workers", "2", "--num-examples", "6") == 0
    with open(tmp_path / "local" / "dataset_info.json") as f:
        assert sum(s["num_examples"] for s in json.load(f)["splits"].values()) == 6
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"worker processes left running: {left}"


def test_dask_runner_options_are_known_and_a_missing_cluster_is_named(corpus, tmp_path, capsys):
    from beam_pipelines.cli import unknown_beam_args

    assert unknown_beam_args(["--runner", "DaskRunner", "--dask_client_address", "tcp://127.0.0.1:1",
                              "--dask_npartitions", "4"]) == []
    assert unknown_beam_args(["--dask_clent_address", "x"]) == ["--dask_clent_address", "x"]
    rc = build(corpus, tmp_path / "nowhere", "--runner", "DaskRunner", "--dask_client_address", "tcp://127.0.0.1:9",
               "--dask_connection_timeout", "1")
    assert rc == 2
    assert "--dask_client_address tcp://127.0.0.1:9: no Dask scheduler answered" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "nowhere") and not os.path.exists(str(tmp_path / "nowhere") + ".incomplete")


def _busy_tasks(dask_scheduler) -> int:
    return sum(ts.state in ("processing", "waiting", "no-worker", "queued") for ts in dask_scheduler.tasks.values())


def test_a_killed_launcher_leaves_no_build_writing_on_the_cluster_and_the_rerun_finishes(cluster, corpus, tmp_path):
    from distributed import Client

    voice_dir, noise_dir, _ = corpus
    output = tmp_path / "ds"
    parts = tmp_path / "ds.incomplete" / "_work" / "parts"
    # 2,000 chunks of one example: more than the cluster writes in the second that a worker trusts
    # its last answer about the launcher (`runners.launcher_gone`).
    args = ["dataset", "--voice-dir", voice_dir, "--noise-dir", noise_dir, "--output", str(output),
            "--num-examples", "2000", "--chunk-size", "1", "--runner", "DaskRunner",
            "--dask_client_address", cluster.scheduler_address]
    env = {**os.environ, "PYTHONPATH": REPO_ROOT}
    proc = subprocess.Popen([sys.executable, "-m", "speech_enhance", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and not (parts.is_dir() and any(n.endswith(".json") for n in os.listdir(parts))):
            assert time.monotonic() < deadline, "no chunk was written within 2 minutes"
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        proc.kill()  # SIGKILL: no cleanup of the launcher's own can run
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    with Client(cluster.scheduler_address, set_as_default=False) as client:
        deadline, idle = time.monotonic() + 120, 0
        while idle < 3 and time.monotonic() < deadline:  # until the cluster has had nothing to do for a while
            idle = idle + 1 if client.run_on_scheduler(_busy_tasks) == 0 else 0
            time.sleep(1.0)
    assert idle >= 3, "the cluster still runs the build of a launcher killed 2 minutes ago"
    assert parts.is_dir(), "the build ran to its end on the cluster after its launcher was killed"
    written = [n for n in os.listdir(parts) if n.endswith(".json")]
    # The chunks running when the launcher died (and for the second a worker trusts its last answer)
    # may finish; the rest of the build is not written.
    assert len(written) < 2000, "every chunk was written after the launcher was killed"
    assert not os.path.exists(output)
    assert not [n for n in os.listdir(tmp_path / "ds.incomplete") if ".tfrecord-" in n or n == "dataset_info.json"]
    # The next run takes over the dead launcher's lock, resumes and finishes.
    assert speech_enhance.main(args) == 0
    with open(output / "dataset_info.json") as f:
        assert sum(s["num_examples"] for s in json.load(f)["splits"].values()) == 2000
