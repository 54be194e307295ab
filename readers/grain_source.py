"""A grain data source over a dataset's split, through the shard indexes (JAX input without TensorFlow).

    import grain
    from readers.grain_source import RecordSource

    source = RecordSource("data/demo", "train")                      # item i: (x, y) numpy float32 [frames, bins, 1]
    ds = grain.MapDataset.source(source).shuffle(seed=0).batch(32)   # exact global shuffle
    for x, y in ds.to_iter_dataset():
        ...

`RecordSource` implements grain's `RandomAccessDataSource` protocol (`__len__`, a thread-safe,
deterministic `__getitem__`, a `__repr__` for checkpoints) without importing grain, so it also works
wherever grain is not installed. Item i is record i of the split (shard by shard, in record order), as
`readers.torch_data.RecordDataset` returns it; the features are `trainer.targets`' numpy functions.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from readers.store import ALL_KEYS, IndexedSplit, check_reader_loss, decode_batch, model_io, model_keys
from tfrecord_schema.dataset import Dataset
from trainer.targets import check_loss_weighting, check_target

OUTPUTS = ("model", "raw", "bytes")


class RecordSource:
    """grain `RandomAccessDataSource` over one split of an indexed, uncompressed dataset.

    Args:
        dataset: dataset directory (local or gs://), or its open `Dataset`.
        split: "train", "valid" or "test".
        output: "model" for (x, y) float32 [frames, bins, 1] (or (x, y, weights) with
            loss_weighting="magnitude"); "raw" for a dict of every feature (numpy arrays and
            scalars, strings as str); "bytes" for the serialized record.
        target, loss_weighting: as `trainer.input_pipeline.make_dataset` (U-Net family).
        loss: "huber", or a waveform loss ("snr", "si-sdr"): y is then the packed spectra [frames,
            bins, 4] (`readers.torch_data.RecordDataset`'s `loss`).
    """

    def __init__(self, dataset: str | os.PathLike | Dataset, split: str = "train", *, output: str = "model",
                 target: str = "noise", loss_weighting: str = "none", loss: str = "huber") -> None:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}. Received: output={output!r}")
        self.records = IndexedSplit(dataset, split)
        self.output, self.target, self.loss_weighting = output, check_target(target), check_loss_weighting(loss_weighting)
        self.loss = check_reader_loss(loss)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Any:
        record = self.records.read(index)  # an integer (negative: from the end); 1.5 is a TypeError
        if self.output == "bytes":
            return record
        keys = ALL_KEYS if self.output == "raw" else model_keys(self.target, self.loss)
        decoded = decode_batch([record], self.records.config, keys)
        if self.output == "raw":
            return {k: (v[0] if v.ndim > 1 else v[0].item() if v.dtype.kind != "U" else str(v[0]))
                    for k, v in decoded.items()}
        return tuple(np.ascontiguousarray(a[0]) for a in
                     model_io(decoded, self.records.config, self.target, self.loss_weighting, self.loss))

    def __repr__(self) -> str:
        return (f"RecordSource(dataset_dir={self.records.dataset_dir!r}, split={self.records.split!r}, "
                f"output={self.output!r}, target={self.target!r}, loss_weighting={self.loss_weighting!r}, "
                f"loss={self.loss!r}, len={len(self)})")
