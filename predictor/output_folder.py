"""The output folder of a predict run: where each output goes, what is skipped, whether it can be
written, and failures.jsonl, the list of the files that failed and why.

`plan_jobs` turns an input and an output folder into the files to denoise (refusing an output that
would replace an input, skipping outputs that exist so that an interrupted run resumes);
`finish_run` writes failures.jsonl, keeping an earlier run's entries for files this run did not
cover. Used by `predictor.folders.enhance_files` and the Beam job (`predictor.beam_predict`).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import tempfile
from typing import Any, Callable, Sequence

from beam_pipelines.audio import FORMATS
from predictor import audio_io
from predictor.file_stream import FileJob
from tfrecord_schema import paths

logger = logging.getLogger(__name__)

FAILURES_FILE = "failures.jsonl"
# A write that fails with one of these fails for every file after it as well (the output's disk
# is full or read-only): the run stops there instead of running the model for files it cannot
# write, and says what to fix (`OutputNotWritableError`).
OUTPUT_ERRNOS = paths.NO_SPACE_ERRNOS | {errno.EROFS}
# The file `check_output_dir` creates and removes to learn whether the output can be written.
_PROBE_NAME = "write-probe"


@dataclasses.dataclass
class PredictSummary:
    """What `enhance_files` did. Seconds are audio seconds at the input's rate."""

    total: int = 0
    written: int = 0
    skipped: int = 0
    failures: list[dict[str, str]] = dataclasses.field(default_factory=list)
    audio_seconds: float = 0.0
    processing_seconds: float = 0.0
    # failures.jsonl entries of earlier runs for files this run did not cover: kept in the file.
    earlier_failures: list[dict[str, str]] = dataclasses.field(default_factory=list)

    @property
    def real_time_factor(self) -> float:
        """Processing seconds per audio second (lower is faster)."""
        return self.processing_seconds / self.audio_seconds if self.audio_seconds else float("nan")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["real_time_factor"] = self.real_time_factor
        return out


def output_path(output_dir: str, rel: str, output_format: str | None) -> str:
    """Where the output of input `rel` goes: same relative path; extension from `output_format`."""
    stem, ext = paths.split_extension(rel)
    if output_format:
        ext = "." + output_format.lower().lstrip(".")
        if ext not in FORMATS:
            raise ValueError(f"output_format must be one of {sorted(f[1:] for f in FORMATS)}. "
                             f"Received: output_format={output_format!r}")
    return paths.join(output_dir, stem + ext.lower())


class OutputNotWritableError(OSError):
    """The output location cannot take the outputs (full, read-only, no permission): the run stops.

    `errno` is the system's error number when there is one; the message names the path, says what
    the system said ("No space left on device") and what to do.
    """

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


def unwritable(path: str, err: OSError, what: str = "cannot write there") -> OutputNotWritableError:
    reason = err.strerror or str(err)
    fix = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space",
           errno.EROFS: "choose a writable output_dir", errno.EACCES: "choose an output_dir you may write to",
           errno.EPERM: "choose an output_dir you may write to"}.get(err.errno, "choose another output_dir")
    return OutputNotWritableError(f"{path}: {what} ({reason}); {fix}", err.errno)


def check_output_dir(output_dir: str) -> None:
    """Makes sure, before any model work, that `output_dir` can take the outputs; changes nothing there.

    Refuses (ValueError) an empty `output_dir` (it would be the current folder), one that is a file
    or lies below a file; raises `OutputNotWritableError` when a file cannot be created and written
    there (read-only, full, no permission): a probe file is written and removed, with the folders
    made for it. A remote prefix gets a probe object, written and deleted through the path layer.
    """
    if not output_dir:
        raise ValueError(f"output_dir must name a folder (an empty one would be the current folder). Received: "
                         f"output_dir={output_dir!r}. Pass the folder to write into, e.g. output_dir='denoised'.")
    if paths.is_remote(output_dir):
        probe = paths.temporary_name(paths.join(output_dir, _PROBE_NAME))
        try:
            paths.write_atomic(probe, b"")
            paths.delete_files([probe])
        except Exception as err:  # the storage clients' own errors (google.api_core, ...) are no OSError
            raise OutputNotWritableError(f"{output_dir}: cannot write there ({type(err).__name__}: {err}); "
                                         "choose an output_dir you may write to") from err
        return
    existing = paths.existing_ancestor(output_dir)
    if not os.path.isdir(existing):
        where = ("is a file" if existing == os.path.abspath(output_dir)
                 else f"lies below {existing!r}, which is a file")
        raise ValueError(f"output_dir must be a folder, but it {where}. Received: output_dir={output_dir!r}. "
                         "Choose a folder (one that does not exist yet is created).")
    target = os.path.abspath(output_dir)
    # The folders made for the probe are removed with it: a refused run leaves nothing behind.
    makes_folders = target != existing
    probe = paths.temporary_name(os.path.join(target, _PROBE_NAME))
    try:
        os.makedirs(target, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0")  # a block of its own: a full disk refuses it
    except OSError as err:
        raise unwritable(output_dir, err) from err
    finally:
        if os.path.exists(probe):
            os.remove(probe)
        folder = target
        while makes_folders and folder != existing:
            try:
                os.rmdir(folder)
            except OSError:  # never made, or another run writes there now
                break
            folder = os.path.dirname(folder)


def stop_on_full_output(output_dir: str, summary: PredictSummary, error: str, errno_: int | None) -> None:
    """Raises the error of a run stopped by a write that every later file would fail as well.

    failures.jsonl is left as it was: the files not written are redone by the next run anyway,
    and the disk would most likely refuse the list too.
    """
    done = summary.written + summary.skipped + len(summary.failures)
    # A remote output is written to a local temporary file first: that disk is the one that is full.
    where = (f"the local folder of temporary files, {tempfile.gettempdir()}" if paths.is_remote(output_dir)
             else f"output_dir={output_dir!r} (or choose another)")
    raise OutputNotWritableError(
        f"{error}: the run stopped after {done} of {summary.total} files ({summary.written} written, "
        f"{summary.skipped} skipped, {len(summary.failures)} failed, named in the log above). Make room in "
        f"{where} and run the same command again: the files written are skipped", errno_)


def plan_jobs(source: str, output_dir: str, *, overwrite: bool = False, output_format: str | None = None
              ) -> tuple[list[FileJob], PredictSummary]:
    """The files of `source` to denoise into `output_dir`: (jobs to run, summary of the total, the
    outputs skipped because they exist and the inputs refused so far). Refuses (ValueError) when an
    output would replace an input, and `check_output_dir`'s refusals; removes temporaries a killed
    run left in a local `output_dir`. The summary's `earlier_failures` are the entries of an earlier
    run's failures.jsonl for files this run does not cover (`finish_run` keeps them in the file).
    Used by `enhance_files` and by the Beam pipeline (`predictor.beam_predict`)."""
    if not output_dir:  # the current folder, which would exclude nothing from the inputs: refused first
        check_output_dir(output_dir)
    base, rels = audio_io.find_audio_files(source, exclude=output_dir)
    jobs = [FileJob(rel, paths.join(base, rel), output_path(output_dir, rel, output_format)) for rel in rels]
    _check_no_input_overwritten(base, output_dir, jobs)
    check_output_dir(output_dir)
    # Local only (remove_stale_temporaries does nothing for a bucket): an object cannot say whether
    # the process writing it still runs, and remote outputs are staged on the local disk anyway.
    paths.remove_stale_temporaries(output_dir)
    output_exists = _existing_outputs(output_dir)
    summary = PredictSummary(total=len(jobs), earlier_failures=_earlier_failures(output_dir, jobs))
    writers: dict[str, FileJob] = {}  # output -> the input that writes it
    todo: list[FileJob] = []
    for job in jobs:
        first = writers.setdefault(job.target, job)
        if first is not job:
            # Without output_format only the extension's case can differ (outputs get lower-case ones).
            cause = (f"--format {output_format.lower().lstrip('.')} gives both that name; denoise one of them "
                     "without --format or into another --output, or rename one" if output_format
                     else "outputs take the extension in lower case; rename one")
            add_failure(summary, job, "duplicate output",
                  f"{job.source}: {first.source} already writes {job.target} ({cause})")
            continue
        if not overwrite and output_exists(job.target):
            summary.skipped += 1
            continue
        todo.append(job)
    if summary.skipped:
        logger.info("skipping %d files whose output exists (pass --overwrite to redo them)", summary.skipped)
    return todo, summary


def add_failure(summary: PredictSummary, job: FileJob, reason: str, message: str) -> None:
    logger.error("skipped %s", message)
    summary.failures.append({"input": job.source, "output": job.target, "reason": reason, "message": message})


def _existing_outputs(output_dir: str) -> Callable[[str], bool]:
    """A test of whether an output path exists, for the resume check.

    Locally one `os.path.exists` per file, as always. For a remote `output_dir` the prefix is
    listed once (one request per 1000 objects) instead of asking for every output in turn.
    """
    if not paths.is_remote(output_dir):
        return os.path.exists
    existing = {paths.join(output_dir, rel) for rel in paths.list_files(output_dir)}
    return existing.__contains__


def _check_no_input_overwritten(base: str, output_dir: str, jobs: Sequence[FileJob]) -> None:
    if paths.same_location(output_dir, base):
        raise ValueError(
            "output_dir must not be the input folder: outputs would replace or mix with the inputs. "
            f"Received: source folder={base!r}, output_dir={output_dir!r}. Choose another output_dir.")
    resolved: dict[str, str] = {}
    sources = {paths.location(job.source, resolved) for job in jobs}
    clashes = [job.source for job in jobs if paths.location(job.target, resolved) in sources]
    if clashes:
        raise ValueError(f"output_dir would overwrite {len(clashes)} input file(s), e.g. {clashes[0]!r}. "
                         f"Received: output_dir={output_dir!r}. Choose an output_dir that holds no inputs.")


def _earlier_failures(output_dir: str, jobs: Sequence[FileJob]) -> list[dict[str, str]]:
    """The entries of `output_dir`'s failures.jsonl whose input is none of `jobs`' (compared as resolved
    locations): files of an earlier run that this run does not retry, which its list keeps. The
    entries of this run's files are replaced by what this run finds (none for a file now written)."""
    path = paths.join(output_dir, FAILURES_FILE)
    try:
        if not paths.isfile(path):
            return []
        lines = paths.read_text(path).splitlines()
    except (OSError, UnicodeDecodeError) as err:
        logger.warning("%s: cannot read the earlier run's failures (%s); it will be replaced", path, err)
        return []
    resolved: dict[str, str] = {}
    covered = {paths.location(job.source, resolved) for job in jobs}
    kept = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # not one of ours (an edited line): dropped with the rewrite
        if isinstance(entry, dict) and isinstance(entry.get("input"), str) and \
                paths.location(entry["input"], resolved) not in covered:
            kept.append(entry)
    return kept


def finish_run(output_dir: str, summary: PredictSummary) -> None:
    """Writes failures.jsonl: the earlier runs' entries that this run did not cover, then this run's.

    A run that cannot write it (its disk full or read-only) raises `OutputNotWritableError` saying
    what was done, since the summary the caller would print is then lost.
    """
    try:
        write_failures(output_dir, summary.earlier_failures + summary.failures)
    except OutputNotWritableError as err:
        raise OutputNotWritableError(
            f"{summary.written} written, {summary.skipped} skipped, {len(summary.failures)} failed of "
            f"{summary.total} files, but {err} (the failures are named in the log above)", err.errno) from err


def write_failures(output_dir: str, failures: list[dict[str, str]]) -> None:
    """Writes `failures` to output_dir/failures.jsonl whole (removes the file when there are none).

    Raises `OutputNotWritableError` naming the file when it cannot be written; no temporary is left.
    """
    path = paths.join(output_dir, FAILURES_FILE)
    try:
        if not failures:
            if paths.isfile(path):  # from an earlier run; its files were retried
                paths.delete_files([path])
            return
        paths.write_atomic(path, "".join(json.dumps(f, sort_keys=True) + "\n" for f in failures).encode("utf-8"))
    except OSError as err:
        raise unwritable(path, err, "cannot write the list of failures") from err
    logger.error("%d file(s) listed as failed in %s", len(failures), path)
