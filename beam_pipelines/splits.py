"""Deterministic train/valid/test assignment by speaker (voices) and by file (noises), never by window.

Groups are ordered by a hash of their name (stable across machines and runs, independent of the
listing order) and handed out in proportion to the split fractions. Noise files are allocated class
by class, carrying the rounding over from one class to the next, so every class reaches every split
where it has enough files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import posixpath
import re
from typing import Iterable, Mapping, Sequence

from tfrecord_schema import paths
from tfrecord_schema.dataset_info import SPLITS

# Noise class tables looked for in a noise folder, in this order (ESC-50 ships meta/esc50.csv).
CLASS_TABLE_FILES = ("classes.tsv", "meta/esc50.csv")
_LIBRISPEECH = re.compile(r"^(\d+)-(\d+)-(\d+)$")
_ESC50 = re.compile(r"^\d+-\d+-[A-Z]-(\d+)$")


def speaker_of(rel_path: str) -> str:
    """LibriSpeech `SPEAKER-CHAPTER-UTT` file names give the speaker; else the parent folder's name.

    A file at the top of the voice folder with no such name is its own speaker.
    """
    stem = posixpath.splitext(posixpath.basename(rel_path))[0]
    match = _LIBRISPEECH.match(stem)
    if match:
        return match.group(1)
    parent = posixpath.dirname(rel_path)
    return posixpath.basename(parent) if parent else stem


def read_class_table(text: str) -> dict[str, str]:
    """Parses a noise class table: TSV `file<TAB>class` (classes.tsv) or ESC-50's `esc50.csv`.

    classes.tsv: an optional `file<TAB>class` header, blank lines and `#` comment lines ignored,
    cells stripped, file paths relative to the folder that holds the table. esc50.csv: the
    `filename` and `category` columns (the file's base name and its class).
    """
    lines = text.splitlines()
    sample = next((line for line in lines if line.strip() and not line.startswith("#")), "")
    dialect = "excel-tab" if "\t" in sample else "excel"
    rows = [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(text, newline=""), dialect=dialect)]
    rows = [row for row in rows if len(row) >= 2 and row[0] and not row[0].startswith("#")]
    if not rows:
        return {}
    header = [h.lower() for h in rows[0]]
    if "filename" in header and "category" in header:  # ESC-50 meta/esc50.csv
        fi, ci = header.index("filename"), header.index("category")
        return {r[fi]: r[ci] for r in rows[1:] if len(r) > max(fi, ci)}
    return {posixpath.normpath(r[0]): r[1] for r in rows if [r[0].lower(), r[1].lower()] != ["file", "class"]}


def find_class_table(folder: str) -> tuple[dict[str, str], str] | None:
    """(table, its path) of the first of CLASS_TABLE_FILES in `folder` (local or gs://), or None."""
    for name in CLASS_TABLE_FILES:
        path = paths.join(folder, name)
        if paths.isfile(path):
            return read_class_table(paths.read_text(path)), path
    return None


def class_in_table(rel_path: str, table: Mapping[str, str]) -> str | None:
    """The table's class of `rel_path` (listed by relative path or by base name), or None."""
    for key in (rel_path, posixpath.basename(rel_path)):
        if key in table:
            return table[key]
    return None


def noise_class_of(rel_path: str, table: Mapping[str, str]) -> str:
    """Class from the table (by relative path or base name), else the parent folder, else 'unknown'."""
    found = class_in_table(rel_path, table)
    if found is not None:
        return found
    parent = posixpath.dirname(rel_path)
    return posixpath.basename(parent) if parent else "unknown"


def noise_classes(root: str, rel_paths: Iterable[str]) -> dict[str, str]:
    """Class of each noise file (paths relative to `root`, a local folder or a gs:// prefix).

    From the nearest class table (`find_class_table`: classes.tsv, else meta/esc50.csv) in the
    file's folder or a folder above it up to `root` that lists the file; else as `noise_class_of`
    with no table: the parent folder's name, or "unknown" at the top.
    """
    tables: dict[str, dict[str, str]] = {}

    def table(folder: str) -> dict[str, str]:
        if folder not in tables:
            found = find_class_table(paths.join(root, folder) if folder else root)
            tables[folder] = found[0] if found else {}
        return tables[folder]

    out = {}
    for rel in rel_paths:
        folder, cls = posixpath.dirname(rel), None
        while cls is None:
            cls = class_in_table(posixpath.relpath(rel, folder) if folder else rel, table(folder))
            if not folder:
                break
            folder = posixpath.dirname(folder)
        out[rel] = cls if cls is not None else noise_class_of(rel, {})
    return out


def _hash(name: str, salt: str) -> str:
    return hashlib.sha1(f"{salt}:{name}".encode()).hexdigest()


def parse_fractions(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"--split-fractions takes three non-negative numbers for train,valid,test (finite, not all zero), e.g. 0.8,0.1,0.1. Received: {text!r}")
    total = sum(values)
    return tuple(v / total for v in values)  # type: ignore[return-value]


def _allocate(count: int, fractions: Sequence[float], carry: list[float]) -> list[int]:
    """Counts per split for `count` items; `carry` keeps rounding residue between calls."""
    wanted = [count * f + c for f, c in zip(fractions, carry)]
    counts = [int(w) for w in wanted]
    order = sorted(range(len(fractions)), key=lambda i: wanted[i] - counts[i], reverse=True)
    for i in order[: count - sum(counts)]:
        counts[i] += 1
    for i in range(len(carry)):
        carry[i] = wanted[i] - counts[i]
    return counts


def assign_groups(groups: Iterable[str], fractions: Sequence[float], salt: str,
                  strata: Mapping[str, str] | None = None) -> dict[str, str]:
    """Maps each group name to a split. `strata` (group -> stratum, e.g. noise class) is optional.

    Every split with a positive fraction gets at least one group when there are enough groups.
    """
    strata = strata or {}
    by_stratum: dict[str, list[str]] = {}
    for g in sorted(set(groups)):
        by_stratum.setdefault(strata.get(g, ""), []).append(g)
    carry = [0.0] * len(SPLITS)
    result: dict[str, str] = {}
    # Small strata first, so the carried residue lands in the large ones.
    for stratum in sorted(by_stratum, key=lambda s: (len(by_stratum[s]), s)):
        members = sorted(by_stratum[stratum], key=lambda g: _hash(g, salt))
        counts = _allocate(len(members), fractions, carry)
        # Valid and test take the first members, train the rest.
        pos = 0
        for split_index in (2, 1, 0):
            for g in members[pos: pos + counts[split_index]]:
                result[g] = SPLITS[split_index]
            pos += counts[split_index]
    wanted = [s for s, f in zip(SPLITS, fractions) if f > 0]
    if len(result) >= len(wanted):
        for split in wanted:
            if split not in result.values():
                donor = max(wanted, key=lambda s: sum(v == s for v in result.values()))
                moved = sorted((g for g, s in result.items() if s == donor), key=lambda g: _hash(g, salt))[0]
                result[moved] = split
    return result
