"""`dataset_info.json`: the description a dataset directory carries beside its shards.

Layout (keys the readers rely on):
    {
      "schema_version": 1,
      "spectrogram": {...SpectrogramConfig.to_dict()...},
      "compression": "" | "GZIP",
      "seed": 0,
      "splits": {"train": {"num_examples": N, "num_bytes": B,
                           "shards": [{"file": "train.tfrecord-00000-of-00002",
                                       "num_examples": n, "num_bytes": b}, ...]},
                 "valid": {...}, "test": {...}},
      "histograms": {...}, "sources": {...}, "rejects": {...}, "arguments": {...}
    }
Shard files are named relative to the dataset directory.
"""

from __future__ import annotations

import json
from typing import Any

from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.schema import check_schema_version

INFO_FILE = "dataset_info.json"
SPLITS = ("train", "valid", "test")


def shard_name(split: str, index: int, count: int) -> str:
    """TFDS-style shard file name, e.g. `train.tfrecord-00003-of-00016`."""
    return f"{split}.tfrecord-{index:05d}-of-{count:05d}"


def parse_dataset_info(text: str, where: str = INFO_FILE) -> dict[str, Any]:
    """Parses and checks the JSON text of a `dataset_info.json`; `where` names it in errors."""
    try:
        info = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON ({err}); was the dataset job interrupted? Rebuild it.") from err
    for key in ("schema_version", "spectrogram", "splits"):
        if key not in info:
            raise ValueError(f"{where} has no '{key}' entry: it was not written by `speech-enhance dataset`.")
    check_schema_version(info["schema_version"], where)
    SpectrogramConfig.from_dict(info["spectrogram"])
    return info


def spectrogram_config(info: dict[str, Any]) -> SpectrogramConfig:
    return SpectrogramConfig.from_dict(info["spectrogram"])


def shard_files(info: dict[str, Any], dataset_dir: str, split: str) -> list[str]:
    """Absolute paths (local or gs://) of a split's shards, in order."""
    if split not in info["splits"]:
        raise ValueError(f"The dataset in {dataset_dir} has no split {split!r}. It has: {sorted(info['splits'])}")
    base = dataset_dir.rstrip("/")
    return [f"{base}/{shard['file']}" for shard in info["splits"][split]["shards"]]
