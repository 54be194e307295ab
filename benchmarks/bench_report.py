"""Writing a benchmark's JSON report: the one tail every script in benchmarks/ shares.

    from bench_report import write_report   # the scripts run as `python benchmarks/NAME.py`
    write_report(args.json, report)
"""

from __future__ import annotations

import json
import os
from typing import Any


def write_report(path: str, report: Any, *, indent: int = 2, announce: bool = True) -> None:
    """Writes `report` as JSON to `path`, creating its folder; prints "wrote PATH" when `announce`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=indent)
    if announce:
        print(f"wrote {path}")
