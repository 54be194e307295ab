"""Where a dataset is built and how it replaces an old one, without ever touching a user's other files.

A build writes into a sibling folder, `OUTPUT.incomplete`, marked as a build by a file of its own.
Only when the job has finished is that folder moved to `OUTPUT`; an old dataset there is replaced
only then, and only when every file in it belongs to a dataset (shards, `dataset_info.json`, the
files the job and `inspect` write beside them). A folder holding anything else is never replaced.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import time
from typing import Sequence

from tfrecord_schema import locks, paths
from tfrecord_schema.dataset_info import INFO_FILE, SPLITS

LOG = logging.getLogger(__name__)

BUILD_SUFFIX = ".incomplete"
LOCK_SUFFIX = ".lock"  # OUTPUT.incomplete.lock: held while a build of OUTPUT runs (build_lock)
BUILD_MARKER = "_BUILDING.json"
INPUTS_FILE = "_work/inputs.json"  # the inputs' identities when the build started (start_build)
_SPLIT = "|".join(SPLITS)
# Relative paths of the files a dataset folder may hold (all written by the job or by `inspect`).
_DATASET_FILE = re.compile(
    r"^(?:dataset_info\.json|splits\.json|rejects\.jsonl|inspect\.png|_problems\.json|" + re.escape(BUILD_MARKER) + "|"
    rf"(?:{_SPLIT})\.tfrecord-\d{{5}}-of-\d{{5}}(?:\.index)?|"
    rf"audio/(?:{_SPLIT})/(?:noisy|clean)/[^/]+\.wav|"
    r"_work/.+)$")


def is_dataset_file(rel: str) -> bool:
    """True for a path (relative to a dataset folder) that the dataset job or `inspect` writes, or
    the temporary of one (`paths.temporary_name`)."""
    return bool(_DATASET_FILE.match(paths.final_name(rel) or rel))


class NoSpaceError(OSError):
    """The disk that holds a build filled up while it ran (errno ENOSPC); the build folder is kept."""

    errno = errno.ENOSPC


def no_space(output: str, build: str, resumes: bool = True) -> NoSpaceError:
    """The one-line error for a build of `output` that filled its disk."""
    return NoSpaceError(f"output={output!r}: no space left on device while writing {build!r}. Free some space "
                        "(or ask for fewer examples) and run the same command again: " + ("the build resumes from what it finished." if resumes else
                                                  "nothing was written yet."))


def build_dir_for(output: str) -> str:
    output = output.rstrip("/") if paths.is_remote(output) else output.rstrip("/") or "/"
    return paths.join(paths.dirname(output), paths.basename(output) + BUILD_SUFFIX)


def check_output(output: str, overwrite: bool, inputs: dict[str, str | Sequence[str] | None]) -> None:
    """Refuses, before any work, an output that the build could not write or must not replace.

    `inputs` maps argument names to input folders (one or several), which must not lie inside the output.
    """
    if not paths.is_remote(output):
        if os.path.isfile(output):
            raise FileExistsError(f"output={output!r} is an existing file, not a folder. Choose a folder path.")
        probe = paths.existing_ancestor(os.path.dirname(os.path.abspath(output)))
        if not os.path.isdir(probe):
            raise FileExistsError(f"output={output!r} cannot be created: {probe!r} is a file, not a folder.")
        if not os.access(probe, os.W_OK):
            raise PermissionError(f"output={output!r} cannot be created: {probe!r} is not writable.")
    for name, folders in inputs.items():
        for folder in [folders] if isinstance(folders, str) else folders or []:
            if folder and (paths.same_location(folder, output) or paths.is_inside(folder, output)):
                raise ValueError(f"{name}={folder!r} lies inside output={output!r}, which the build would replace. "
                                 "Keep inputs outside the output folder.")
    existing = paths.list_files(output) if paths.exists_folder(output) else []
    if not existing:
        return
    foreign = [rel for rel in existing if not is_dataset_file(rel)]
    if foreign:
        shown = ", ".join(repr(f) for f in foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise FileExistsError(f"output={output!r} is not empty and holds files that are not part of a dataset "
                              f"({shown}); it will not be replaced. Choose a new or empty folder.")
    if not overwrite:
        what = "a dataset" if INFO_FILE in existing else "an unfinished dataset (no dataset_info.json)"
        raise FileExistsError(f"output={output!r} already holds {what}. Pass overwrite=True to "
                              "replace it once the new build has finished, or choose another folder.")


def check_space(output: str, estimate: int, assume_yes: bool) -> None:
    """Refuses a local build whose estimated size (build folder and old dataset side by side) exceeds
    the free space, unless `assume_yes`."""
    free = paths.free_bytes(output)
    if free is None or estimate <= free or assume_yes:
        return
    raise ValueError(f"The dataset would take about {paths.format_bytes(estimate)} but only "
                     f"{paths.format_bytes(free)} are "
                     f"free where output={output!r} goes. Ask for fewer examples, free some space, or pass "
                     "assume_yes=True if space will be freed while it runs.")


def start_build(output: str, fingerprint: str, inputs: dict[str, list[int]] | None = None) -> str:
    """Returns the build folder for `output`, ready for a build whose content `fingerprint` names.

    The leftover of an interrupted build (recognised by its marker file) is resumed when it has the
    same fingerprint, so its finished decodes and parts are reused, and removed otherwise; a folder
    of that name that no build left is refused, never deleted. `inputs` ({input name: identity},
    part of the fingerprint) is kept in the build folder, so that a leftover removed because input
    files changed is logged as such, naming them.
    """
    build = build_dir_for(output)
    inputs_path = paths.join(build, INPUTS_FILE)
    leftover = paths.list_files(build) if paths.exists_folder(build) else []
    if leftover and BUILD_MARKER not in leftover and all(
            (paths.final_name(rel) or rel) in (INPUTS_FILE, BUILD_MARKER) for rel in leftover):
        # What this function writes before its marker: a build stopped as it started (its lock is
        # ours now), with nothing worth keeping.
        LOG.info("removing %s, left by a build stopped as it started", build)
        paths.delete_tree(build)
        leftover = []
    if leftover:
        if BUILD_MARKER not in leftover or not all(is_dataset_file(rel) for rel in leftover):
            raise FileExistsError(f"{build!r} exists and was not left by a dataset build; the build folder of "
                                  f"output={output!r} must be free. Move it away.")
        try:
            marker = json.loads(paths.read_text(paths.join(build, BUILD_MARKER)))
        except ValueError:
            marker = {}
        if marker.get("fingerprint") == fingerprint:
            # Files being written when the build stopped (no writer is left: the build lock is ours).
            paths.delete_files([paths.join(build, rel) for rel in leftover if paths.final_name(rel)])
            LOG.info("resuming the interrupted build in %s: finished work is reused", build)
            return build
        LOG.info("removing %s, left by an interrupted build %s; starting over", build,
                 _why_not_resumed(inputs_path if INPUTS_FILE in leftover else None, inputs))
        paths.delete_tree(build)
    try:
        paths.makedirs(build)
        if inputs is not None:
            paths.write_atomic(inputs_path, json.dumps(inputs, sort_keys=True).encode())
        paths.write_atomic(paths.join(build, BUILD_MARKER),
                           json.dumps({"output": output, "started": time.time(), "fingerprint": fingerprint}).encode())
    except OSError as err:
        if paths.is_no_space(err):
            raise no_space(output, build) from err
        raise PermissionError(f"output={output!r}: cannot write the build folder {build!r} ({err}).") from err
    return build


def _why_not_resumed(inputs_path: str | None, inputs: dict[str, list[int]] | None) -> str:
    """"with other arguments", or which input files changed since the leftover was started."""
    if inputs_path is None or inputs is None:
        return "with other arguments or inputs"
    try:
        before = json.loads(paths.read_text(inputs_path))
    except (ValueError, OSError):
        return "with other arguments or inputs"
    changed = sorted(k for k in inputs.keys() & before.keys() if list(before[k]) != list(inputs[k]))
    added, removed = sorted(inputs.keys() - before.keys()), sorted(before.keys() - inputs.keys())
    if not (changed or added or removed):
        return "with other arguments"
    parts = []
    for what, names in (("changed (size or modification time)", changed), ("added", added), ("removed", removed)):
        if names:
            shown = ", ".join(n.split(":", 1)[1] for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3
                                                                      else "")
            parts.append(f"{len(names)} {what}: {shown}")
    return "whose input files have changed since (" + "; ".join(parts) + "), so its decoded audio and chunks are stale"


def build_lock(output: str) -> locks.FileLock:
    """The lock that one build of `output` at a time holds: `OUTPUT.incomplete.lock`, beside the
    build folder (inside it, removing a leftover would remove the lock too)."""
    return locks.FileLock(build_dir_for(output) + LOCK_SUFFIX, f"output={output!r}")


def replace_with_build(build: str, output: str) -> None:
    """Moves the finished build folder to `output`, replacing the dataset there (checked by
    `check_output` to hold nothing else)."""
    paths.delete_files([paths.join(build, BUILD_MARKER)])
    if not paths.is_remote(output):
        if not os.path.isdir(output):
            os.rename(build, output)
            return
        # Two renames: the old dataset stays whole until the new one is in place.
        old = build_dir_for(output)[: -len(BUILD_SUFFIX)] + ".replaced"
        paths.delete_tree(old)
        os.rename(output, old)
        os.rename(build, output)
        paths.delete_tree(old)
        return
    old = paths.list_files(output)
    if old:
        # No folders to rename on a bucket: invalidate the old dataset first, so that a reader never
        # sees old info beside new shards, then move the new files in with dataset_info.json last.
        if INFO_FILE in old:
            paths.delete_files([paths.join(output, INFO_FILE)])
        paths.delete_files([paths.join(output, rel) for rel in old if rel != INFO_FILE])
    paths.move_tree(build, output, last=INFO_FILE)
