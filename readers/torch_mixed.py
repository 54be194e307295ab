"""A PyTorch dataset of examples mixed on the fly from a source store (`readers.mixed.MixedSource`).

    from torch.utils.data import DataLoader
    from readers.torch_mixed import MixedDataset, StepSampler

    data = MixedDataset(store, "train", MixOptions(seed=0), config, length=steps * 32)
    plan = EpochPlan(steps_per_epoch=1000, batch_size=32)
    loader = DataLoader(data, sampler=StepSampler(plan, first_step=0, steps=steps), batch_size=None, num_workers=2)

Item i is example i of the split; a list of indices as the item returns the batch itself, mixed and
transformed at once (one STFT call), as `readers.torch_data.RecordDataset` does. `StepSampler` gives
the batches of training steps first_step, first_step + 1, ...: step s draws the examples
`EpochPlan.batch_indices(s)` whatever the workers, so a run resumed at step s reads what an
uninterrupted run reads from step s on.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.utils.data

from mixing.on_the_fly import EpochPlan
from mixing.options import AugmentOptions, MixOptions
from readers.mixed import MixedSource, split_batch
from readers.shared_memory import shared_batch
from readers.store import check_positive
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.sources import SourceStore


def _tensors(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        return torch.from_numpy(value)
    if isinstance(value, dict):
        return {k: _tensors(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_tensors(v) for v in value)
    return value


class MixedDataset(torch.utils.data.Dataset):
    """Map-style dataset of examples mixed on the fly: the arguments and items of
    `readers.mixed.MixedSource`, as tensors (metadata as Python values)."""

    def __init__(self, store: SourceStore, split: str, mix: MixOptions, config: SpectrogramConfig, *, length: int,
                 augment: AugmentOptions | None = None, output: str = "model", target: str = "noise",
                 loss_weighting: str = "none", loss: str = "huber") -> None:
        self.source = MixedSource(store, split, mix, config, length=length, augment=augment, output=output,
                                  target=target, loss_weighting=loss_weighting, loss=loss)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int | Sequence[int]) -> Any:
        if isinstance(index, (list, tuple, range, np.ndarray, torch.Tensor)) and np.ndim(index) == 1:
            batch = self.source.batch(index)
            if isinstance(batch, tuple) and torch.utils.data.get_worker_info() is not None:
                return shared_batch(batch)  # out of the worker through reused shared memory
            return _tensors(batch)
        return _tensors(self.source[index])

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        return [_tensors(example) for example in split_batch(self.source.batch(indices), len(indices))]


class StepSampler(torch.utils.data.Sampler):
    """The draw indices of training steps first_step .. first_step + steps - 1 (`EpochPlan.batch_indices`),
    one list per step: a DataLoader's `sampler` with `batch_size=None`."""

    def __init__(self, plan: EpochPlan, first_step: int = 0, steps: int = 1) -> None:
        if not isinstance(first_step, int) or isinstance(first_step, bool) or first_step < 0:
            raise ValueError(f"first_step must be a non-negative integer. Received: first_step={first_step!r}")
        self.plan, self.first_step, self.steps = plan, first_step, check_positive("steps", steps)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.first_step, self.first_step + self.steps):
            yield list(self.plan.batch_indices(step))
