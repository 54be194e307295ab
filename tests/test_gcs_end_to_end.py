"""Every command on gs:// paths, against a real local GCS emulator (see conftest.py's `gcs` fixture).

The dataset job runs gs:// -> gs:// on 2 worker processes and must give the same bytes as the same
build done locally; inspect, train, predict and evaluate read (and write) the bucket too.
"""

import json
import os

import numpy as np
import pytest

import speech_enhance
from beam_pipelines.launcher import run_dataset
from beam_pipelines.options import DatasetOptions
from dataset_fixtures import add_bad_inputs, make_corpus
from tfrecord_schema import paths

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def upload_tree(local: str, remote: str) -> None:
    for rel in paths.list_files(local):
        paths.upload_atomic(os.path.join(local, rel), paths.join(remote, rel))


def options(voice_dir, noise_dir, output, **kw):
    kw.setdefault("num_examples", 30)
    kw.setdefault("max_shard_bytes", int(0.6 * 2**20))
    kw.setdefault("chunk_size", 4)
    return DatasetOptions(voice_dir=str(voice_dir), noise_dir=str(noise_dir), output=str(output), **kw)


@pytest.fixture(scope="module")
def corpus(gcs, tmp_path_factory):
    """The same corpus (with bad files) locally and in the bucket."""
    root = str(tmp_path_factory.mktemp("corpus"))
    voice_dir, noise_dir = make_corpus(root, speakers=5, utterances=2)
    bad = add_bad_inputs(voice_dir, noise_dir)
    remote = gcs.url("in")
    upload_tree(voice_dir, paths.join(remote, "voices"))
    upload_tree(noise_dir, paths.join(remote, "noises"))
    return {"local": (voice_dir, noise_dir), "remote": (paths.join(remote, "voices"), paths.join(remote, "noises")),
            "bad": bad}


@pytest.fixture(scope="module")
def datasets(gcs, corpus, tmp_path_factory):
    local_out = str(tmp_path_factory.mktemp("local") / "ds")
    remote_out = gcs.url("out/ds")
    local = run_dataset(options(*corpus["local"], local_out, write_audio=("test",)), workers=2).info.to_dict()
    remote = run_dataset(options(*corpus["remote"], remote_out, write_audio=("test",)), workers=2).info.to_dict()
    return local_out, local, remote_out, remote


def test_dataset_from_bucket_to_bucket_matches_the_local_build(datasets, corpus, gcs):
    local_out, local, remote_out, remote = datasets
    files = [s["file"] for split in local["splits"].values() for s in split["shards"]]
    assert files == [s["file"] for split in remote["splits"].values() for s in split["shards"]]
    for name in files:
        assert paths.read_bytes(paths.join(remote_out, name)) == paths.read_bytes(os.path.join(local_out, name)), name
    assert remote["splits"] == local["splits"]
    assert remote["histograms"] == local["histograms"]
    # Nothing of the build is left: no scratch, no temporaries, no build prefix beside the output.
    listed = paths.list_files(gcs.url("out"))
    assert not [f for f in listed if "_work" in f or ".incomplete" in f], listed
    assert sorted(paths.list_files(remote_out)) == sorted(paths.list_files(local_out))
    # Bad files in the bucket are rejects, as they are locally.
    rejects = [json.loads(line) for line in paths.read_text(paths.join(remote_out, "rejects.jsonl")).splitlines()]
    assert {r["file"]: r["reason"] for r in rejects} == {f: reason for f, (_, reason) in corpus["bad"].items()}
    assert remote["sources"]["voice_dir"] == corpus["remote"][0]


def test_overwrite_on_a_bucket_replaces_the_old_dataset(corpus, gcs):
    out = gcs.url("replace/ds")
    run_dataset(options(*corpus["remote"], out, num_examples=40, max_shard_bytes=int(0.3 * 2**20)), workers=1)
    old_files = set(paths.list_files(out))
    with pytest.raises(FileExistsError, match="already holds a dataset"):
        run_dataset(options(*corpus["remote"], out, num_examples=12), workers=1)
    info = run_dataset(options(*corpus["remote"], out, num_examples=12, overwrite=True), workers=1).info.to_dict()
    new_files = set(paths.list_files(out))
    shards = {name for split in info["splits"].values() for s in split["shards"] for name in (s["file"], s["index"])}
    assert new_files == shards | {"dataset_info.json", "rejects.jsonl", "splits.json"}
    assert old_files - new_files  # the old dataset had more shards: they are gone
    written = json.loads(paths.read_text(paths.join(out, "dataset_info.json")))
    assert sum(s["num_examples"] for s in written["splits"].values()) == 12
    assert not [f for f in paths.list_files(gcs.url("replace")) if not f.startswith("ds/")]


def test_inspect_a_bucket_dataset_writes_its_plot_there(datasets, capsys):
    _, _, remote_out, remote = datasets
    assert speech_enhance.main(["inspect", remote_out, "--verify", "--examples", "2"]) == 0
    out = capsys.readouterr().out
    total = sum(s["num_examples"] for s in remote["splits"].values())
    assert f"healthy (read all {total} records" in out
    png = paths.read_bytes(paths.join(remote_out, "inspect.png"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_one_epoch_from_bucket_shards_exports_a_model_to_the_bucket(datasets, gcs):
    from trainer.model_dir import load_model_dir
    from trainer.train import train

    _, _, remote_out, remote = datasets
    model_dir = gcs.url("models/unet")
    summary = train(remote_out, model_dir, epochs=1, base_filters=4, depth=3, batch_size=8, seed=0,
                    deterministic=True, verbose=0)
    assert summary["epochs_run"] == 1
    listed = set(paths.list_files(model_dir))
    assert {"model.keras", "model.json", "training/history.csv", "training/loss.png", "training/run.json"} <= listed
    assert not [f for f in listed if ".incomplete" in f], listed
    model, info = load_model_dir(model_dir)
    assert info["training_data"]["num_examples"]["train"] == remote["splits"]["train"]["num_examples"]
    x = np.random.default_rng(0).random((1, *info["config"].shape, 1), dtype=np.float32)
    assert np.all(np.isfinite(model.predict(x, verbose=0)))
