"""history.csv, the per-epoch log of a training run: written, cut back for a resumed run and read here.

    history = HistoryCsv(paths.join(work_dir, "history.csv"))
    history.write(rows)                 # after every epoch: every row so far
    rows = history.keep_before(epoch)   # resuming after `epoch` epochs
    columns = history.columns()         # {"epoch": [0.0, 1.0], "loss": [0.12, 0.09], ...}

The layout is what Keras' `CSVLogger` writes (a header, then one row per epoch: "epoch", then the
logs' keys sorted). The whole file is rewritten through the path layer at every change (an atomic
write, local or gs://): CSVLogger's open file fails on gs:// in Keras 3.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Mapping, Sequence

from tfrecord_schema import paths


class HistoryCsv:
    """The history.csv file at `path` (local or gs://)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def exists(self) -> bool:
        return paths.isfile(self.path)

    def rows(self) -> list[dict[str, str]]:
        """The rows as written (cells are strings); [] when there is no file."""
        return list(self._reader()) if self.exists() else []

    def write(self, rows: Sequence[Mapping[str, Any]], fields: Sequence[str] | None = None) -> None:
        """Writes `rows` as the whole file. `fields`: the columns (default "epoch", then every other
        key of any row, sorted); a row without some column leaves its cell empty."""
        if fields is None:
            fields = ["epoch"] + sorted({k for row in rows for k in row if k != "epoch"})
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=fields, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        paths.write_atomic(self.path, out.getvalue().encode("utf-8"))

    def keep_before(self, epoch: int) -> list[dict[str, str]]:
        """Drops the rows of epochs >= `epoch` (written after the last backup of a run that resumes
        after `epoch` epochs) and returns the rows kept; [] when there is no file."""
        if not self.exists():
            return []
        reader = self._reader()
        rows = [row for row in reader if int(float(row.get("epoch", "0"))) < epoch]
        self.write(rows, reader.fieldnames or [])
        return rows

    def delete(self) -> None:
        if self.exists():
            paths.delete_files([self.path])

    def columns(self) -> dict[str, list[float]]:
        """The columns as float lists (missing or non-numeric cells -> NaN), as `plots.plot_history` takes them."""
        columns: dict[str, list[float]] = {}
        for row in self._reader():
            for key, value in row.items():
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    number = math.nan
                columns.setdefault(key, []).append(number)
        return columns

    def _reader(self) -> csv.DictReader:
        return csv.DictReader(io.StringIO(paths.read_text(self.path)))
