"""The job manifest of `predict --runner` (`predictor.beam_predict`): the files a run denoises, handed
to the pipeline in a few JSON-lines shards instead of its graph (`JobManifest`), and read back on
the workers (`ReadJobs`).
"""

from __future__ import annotations

import json
from typing import Iterator, Sequence

import apache_beam as beam

from predictor.file_stream import FileJob
from tfrecord_schema import paths

# The job manifest: OUTPUT/.predict-jobs.PID-XXXXXXXX.tmp/jobs-SSSSS-of-NNNNN.jsonl. At least
# _MIN_SHARDS shards (fewer only for fewer files), at most _JOBS_PER_SHARD files (~2 MB) in each:
# Beam's DaskRunner spreads the shards, not the lines, over its partitions (its Reshuffle changes
# nothing), so there must be some to spread.
MANIFEST_NAME = "predict-jobs"  # the final name of its temporary folder (`paths.temporary_name`)
_MIN_SHARDS = 16
_JOBS_PER_SHARD = 10_000


class JobManifest:
    """The files a run denoises, handed to the pipeline in a few JSON-lines shards instead of its graph.

    It lives in a hidden folder of `output_dir` (local or gs://, through `tfrecord_schema.paths`)
    as a temporary of this process (`paths.temporary_name`: `.predict-jobs.PID-XXXXXXXX.tmp`): it is never taken as
    an input (`find_audio_files` takes wav/flac/ogg only, and leaves out an output folder inside the
    input), never as an output (outputs are named after inputs, and a run refuses a folder that
    exists or that an output would fall in), and `remove` deletes it. A local one that a killed run
    left behind is removed by the next run (`paths.remove_stale_temporaries`). Each line is one `FileJob`'s
    {"rel", "source", "target"}; `write` and `job_from_line` are the format's two ends.
    """

    def __init__(self, output_dir: str, name: str | None = None) -> None:
        self.output_dir = output_dir
        self.name = name or paths.basename(paths.temporary_name(paths.join(output_dir, MANIFEST_NAME)))
        self.folder = paths.join(output_dir, self.name)
        self.shards: list[tuple[str, int]] = []  # (path, number of lines)
        self.created = False  # `remove` deletes only a folder this object made

    @staticmethod
    def num_shards(num_jobs: int) -> int:
        return max(min(num_jobs, _MIN_SHARDS), -(-num_jobs // _JOBS_PER_SHARD))

    def write(self, jobs: Sequence[FileJob]) -> list[tuple[str, int]]:
        """Writes `jobs` in `num_shards(len(jobs))` shards, in their order, streamed line by line;
        returns the shards as (path, number of lines), what `ReadJobs` reads. Refuses (ValueError)
        a folder that exists, or a job whose output would fall inside it, before writing anything."""
        if paths.exists_folder(self.folder) or paths.isfile(self.folder):
            raise ValueError(f"{self.folder} exists already: another run's job manifest? Run again (another "
                             "name is drawn).")
        inside = paths.join(self.folder, "")
        for job in jobs:
            if job.target.startswith(inside):
                raise ValueError(f"{job.source}: its output {job.target} would fall in the job manifest's folder "
                                 f"{self.folder}. Rename the input folder {self.name}.")
        n, count = len(jobs), self.num_shards(len(jobs))
        self.shards = []
        self.created = True
        paths.makedirs(self.folder)
        for k in range(count):
            path = paths.join(self.folder, f"jobs-{k:05d}-of-{count:05d}.jsonl")
            start, end = k * n // count, (k + 1) * n // count
            with paths.open_write(path) as f:
                for i in range(start, end):
                    job = jobs[i]
                    f.write(json.dumps({"rel": job.rel, "source": job.source, "target": job.target},
                                       ensure_ascii=False).encode("utf-8") + b"\n")
            self.shards.append((path, end - start))
        return self.shards

    @staticmethod
    def job_from_line(line: str) -> FileJob:
        item = json.loads(line)
        return FileJob(item["rel"], item["source"], item["target"])

    def remove(self) -> None:
        """Deletes the manifest's folder, if `write` made it."""
        if self.created:
            paths.delete_tree(self.folder)
            self.created = False


def _read_shard(shard: tuple[str, int]) -> Iterator[FileJob]:
    """The jobs of a manifest shard (path, number of lines), streamed line by line through the path
    layer. The path is taken literally (Beam's text sources take it for a pattern, and `[`, `*` or
    `?` in an output folder's name would make it match nothing, which they read as no lines at all);
    a shard that does not hold its number of lines raises OSError, so no file is silently left out."""
    path, expected = shard
    count = 0
    with paths.open_read(path) as f:
        for line in f:
            count += 1
            yield JobManifest.job_from_line(line)
    if count != expected:
        raise OSError(f"{path}: {count} lines read, {expected} written: the job manifest was changed or cut short")


class ReadJobs(beam.PTransform):
    """The manifest's shards -> FileJob per file, reshuffled over the workers."""

    def __init__(self, shards: Sequence[tuple[str, int]]) -> None:
        super().__init__()
        self.shards = [(path, int(lines)) for path, lines in shards]

    def expand(self, p):
        return (p
                | "Shards" >> beam.Create(self.shards)
                | "SpreadShards" >> beam.Reshuffle()
                | "ReadShards" >> beam.FlatMap(_read_shard)
                | "Spread" >> beam.Reshuffle())
