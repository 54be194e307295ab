"""The job manifest of `predict --runner` (`job_manifest.JobManifest`, `ReadJobs`): what the launcher
writes is what a real Beam pipeline reads, from any folder name; the planner's input-overwrite check
(now resolving each folder once) still sees through links; and a run from a bucket (the local GCS
emulator) to a bucket keeps its manifest there and removes it, with `predict`'s outputs."""

import io
import json
import os

import apache_beam as beam
import keras
import numpy as np
import pytest
import soundfile
from apache_beam.testing.util import assert_that, equal_to

from beam_pipelines.testing import SMALL_CONFIG
from predictor.beam_predict import run_predict
from predictor.predict_options import PredictOptions
from predictor.job_manifest import MANIFEST_NAME, JobManifest, ReadJobs
from predictor.enhance import Enhancer
from predictor.folders import enhance_files
from predictor.file_stream import FileJob
from predictor.output_folder import plan_jobs
from tfrecord_schema import paths
from trainer.model import build_unet
from trainer.model_dir import save_model_dir

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


def test_shard_counts():
    assert [JobManifest.num_shards(n) for n in (1, 5, 16, 17, 160_000, 160_001, 1_000_000)] == \
        [1, 5, 16, 16, 16, 17, 100]


def test_what_is_written_is_what_the_pipeline_reads(tmp_path):
    # An output folder whose name Beam would take for a pattern, and names beyond ASCII.
    output = str(tmp_path / "out [1] * ?")
    jobs = [FileJob(f"d/é{i} [x].wav", f"/in/d/é{i} [x].wav", os.path.join(output, f"d/é{i} [x].wav"))
            for i in range(40)]
    manifest = JobManifest(output)
    shards = manifest.write(jobs)
    assert len(shards) == 16 and all(os.path.dirname(path) == manifest.folder for path, _ in shards)
    assert os.path.basename(manifest.folder).startswith(f".{MANIFEST_NAME}.{os.getpid()}-")
    texts = [paths.read_text(path) for path, _ in shards]
    lines = [line for text in texts for line in text.splitlines()]
    assert [JobManifest.job_from_line(line) for line in lines] == jobs  # in order, shard after shard
    assert [len(text.splitlines()) for text in texts] == [n for _, n in shards]
    assert sorted(n for _, n in shards) == [2] * 8 + [3] * 8

    with beam.Pipeline(runner="FnApiRunner") as p:
        read = p | ReadJobs(shards) | beam.Map(lambda job: (job.rel, job.source, job.target, job.sample_rate))
        assert_that(read, equal_to([(j.rel, j.source, j.target, 0) for j in jobs]))

    # A shard cut short fails the pipeline rather than leaving files out.
    with open(shards[2][0], "r+", encoding="utf-8") as f:
        first = f.readline()
        f.seek(0)
        f.truncate()
        f.write(first)
    with pytest.raises(Exception, match=r"jobs-00002-of-00016.jsonl: 1 lines read, 2 written"), \
            beam.Pipeline(runner="FnApiRunner") as p:
        p | ReadJobs(shards)

    other = JobManifest(output, name=os.path.basename(manifest.folder))
    with pytest.raises(ValueError, match="exists already"):
        other.write(jobs)
    other.remove()  # not its folder: left alone
    assert len(os.listdir(manifest.folder)) == 16
    manifest.remove()
    assert os.listdir(output) == []


def test_the_overwrite_check_still_resolves_links(tmp_path):
    source, out = tmp_path / "in", tmp_path / "out"
    (source / "sub").mkdir(parents=True)
    for rel in ("a.wav", "sub/b.wav", "sub/c.wav"):
        soundfile.write(str(source / rel), np.zeros(800, np.float32), 8000)
    out.mkdir()
    os.symlink(source / "sub", out / "sub")  # the output's sub-folder is the input's
    with pytest.raises(ValueError, match=r"output_dir would overwrite 2 input file\(s\), e.g. .*sub/b.wav"):
        plan_jobs(str(source), str(out))
    os.remove(out / "sub")
    os.symlink(source / "a.wav", out / "a.wav")  # one output is a link to its input
    with pytest.raises(ValueError, match=r"output_dir would overwrite 1 input file\(s\), e.g. .*a.wav"):
        plan_jobs(str(source), str(out))
    os.remove(out / "a.wav")
    jobs, summary = plan_jobs(str(source), str(out))
    assert (len(jobs), summary.total) == (3, 3)

    # Folders resolved once give what os.path.realpath gives, links, dangling links and missing files too.
    os.symlink(source, tmp_path / "link")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    cache = {}
    for path in [str(tmp_path / "link" / "sub" / "b.wav"), str(out / "sub" / "x.wav"), str(tmp_path / "dangling"),
                 str(tmp_path / "link" / "missing" / "y.wav"), "relative.wav", str(tmp_path / "link") + "/"]:
        assert paths.location(path, cache) == os.path.realpath(path), path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = build_unet(SMALL_CONFIG, base_filters=4, depth=3)
    return save_model_dir(model, str(tmp_path_factory.mktemp("model")), config=SMALL_CONFIG, target="mask")


def test_bucket_to_bucket_run_keeps_its_manifest_in_the_bucket_and_removes_it(model_dir, gcs, tmp_path,
                                                                             monkeypatch):
    local_in = tmp_path / "in"
    rng = np.random.default_rng(0)
    for rel, rate in (("a.wav", 8000), ("sub/b.wav", 16000), ("sub/c.flac", 11025)):
        (local_in / os.path.dirname(rel)).mkdir(parents=True, exist_ok=True)
        x = 0.2 * np.sin(2 * np.pi * 300 * np.arange(9000) / rate) + 0.05 * rng.standard_normal(9000)
        soundfile.write(str(local_in / rel), x.astype(np.float32), rate)
    remote_in, remote_out = gcs.url("manifest/in"), gcs.url("manifest/out")
    for rel in paths.list_files(str(local_in)):
        paths.upload_atomic(str(local_in / rel), paths.join(remote_in, rel))
    seen = []
    write = JobManifest.write

    def spy(self, jobs):
        shards = write(self, jobs)
        seen.append([paths.read_text(path) for path, _ in shards])  # read back from the bucket
        return shards

    monkeypatch.setattr(JobManifest, "write", spy)
    summary = run_predict(PredictOptions(source=remote_in, output_dir=remote_out,
                                         model_dir=model_dir, batch_size=4, workers=2))
    assert (summary.total, summary.written, summary.failures) == (3, 3, [])
    [texts] = seen
    assert sorted(json.loads(line)["source"] for text in texts for line in text.splitlines()) == [
        paths.join(remote_in, rel) for rel in ("a.wav", "sub/b.wav", "sub/c.flac")]
    assert paths.list_files(remote_out) == ["a.wav", "sub/b.wav", "sub/c.flac"]  # the manifest is gone

    expected = str(tmp_path / "expected")
    enhance_files(Enhancer.from_model_dir(model_dir, batch_size=4, workers=0), str(local_in), expected)
    for rel in ("a.wav", "sub/b.wav", "sub/c.flac"):
        y, rate = soundfile.read(io.BytesIO(paths.read_bytes(paths.join(remote_out, rel))), dtype="float32")
        x, expected_rate = soundfile.read(os.path.join(expected, rel), dtype="float32")
        assert rate == expected_rate
        np.testing.assert_allclose(y, x, atol=1e-6, err_msg=rel)

    # A rerun skips all three: nothing to hand the pipeline, so no manifest at all.
    again = run_predict(PredictOptions(source=remote_in, output_dir=remote_out,
                                       model_dir=model_dir, batch_size=4, workers=2))
    assert (again.skipped, again.written, len(seen)) == (3, 0, 1)
