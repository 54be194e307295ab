"""The batches Keras trains on with the torch backend: DataLoaders over the PyTorch readers of the
shards (`readers.torch_data`), for `trainer.train.train`'s `torch_inputs`.

    os.environ["KERAS_BACKEND"] = "torch"
    from readers.torch_training import training_loaders
    from trainer.train import train
    train("data/demo", "models/demo", torch_inputs=training_loaders)

`speech-enhance train --backend torch` passes them the same way. torch is imported on the first
call, not with this module.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # `speech-enhance` imports this module for every command: annotations only
    from mixing.options import AugmentOptions, MixOptions
    from tfrecord_schema.config import SpectrogramConfig
    from tfrecord_schema.dataset import Dataset
    from tfrecord_schema.sources import SourceStore
    from trainer.config import TrainConfig


def training_loaders(dataset: Dataset | SourceStore, config: TrainConfig, architecture: str,
                     validation_split: str | None, validation_steps: int | None, *,
                     accelerator: bool | None = None, spectrogram: SpectrogramConfig | None = None,
                     mix: MixOptions | None = None, augment: AugmentOptions | None = None,
                     first_step: int = 0, steps: int | None = None):
    """(training DataLoader, validation DataLoader or None) from the PyTorch readers, for Keras on the
    torch backend: the same batches as the tf.data pipeline, from `readers.torch_data`. Training
    streams the repeated, shuffled split (seeded by `config.seed`) as `loader_settings` says:
    on a CUDA machine through DataLoader worker processes into pinned memory, on CPU on threads of
    this process. Validation reads the first `validation_steps` batches of its split in order.
    `accelerator`: whether batches go to a CUDA device
    (default: `torch.cuda.is_available()`).

    A source store (`tfrecord_schema.sources.SourceStore`) is mixed on the fly (`mixed_loaders`):
    `spectrogram` (the model's), `mix` and `augment` say how, and training reads steps
    `first_step` .. `first_step + steps - 1` (default: to the end of the run, step
    `config.epochs * config.steps_per_epoch - 1`)."""
    if architecture != "unet":
        raise ValueError(f"train(): the torch backend reads data through readers.torch_data, which makes the "
                         f"U-Net's inputs and targets only. Received: architecture={architecture!r}. Use "
                         "--backend tensorflow or jax for the other families.")
    from tfrecord_schema.sources import SourceStore

    if isinstance(dataset, SourceStore):
        if spectrogram is None or mix is None:
            raise ValueError("train(): a source store is mixed on the fly: pass the model's spectrogram and the mixing "
                             f"options. Received: spectrogram={spectrogram!r}, mix={mix!r}")
        if steps is None:  # the rest of the run
            if config.steps_per_epoch is None:
                raise ValueError("train(): a source store has no size to make epochs of: set steps_per_epoch, or pass "
                                 "steps. Received: steps_per_epoch=None")
            steps = config.epochs * config.steps_per_epoch - first_step
        return mixed_loaders(dataset, spectrogram, mix, augment, config.batch_size, first_step, steps,
                             validation_steps if validation_split else None, train_split=config.train_split,
                             validation_split=validation_split or "valid", target=config.target,
                             loss_weighting=config.loss_weighting, loss=config.loss, accelerator=accelerator)
    import torch.utils.data

    from readers.torch_data import RecordDataset, StreamDataset

    if accelerator is None:
        accelerator = torch.cuda.is_available()
    settings = loader_settings(accelerator, usable_cpus())
    workers = settings["loader"]["num_workers"]
    common = dict(target=config.target, loss_weighting=config.loss_weighting, loss=config.loss)
    train_loader = torch.utils.data.DataLoader(
        StreamDataset(dataset, config.train_split, batch_size=config.batch_size, shuffle=True,
                      # One buffer's worth in all, as tf.data holds, shared by the workers.
                      shuffle_buffer=max(1, config.shuffle_buffer // max(1, workers)), seed=config.seed,
                      repeat=True, drop_remainder=True, threads=settings["threads"], **common),
        batch_size=None, **settings["loader"])
    if validation_split is None:
        return train_loader, None
    records = RecordDataset(dataset, validation_split, **common)
    first = torch.utils.data.Subset(records, range(min(len(records), validation_steps * config.batch_size)))
    return train_loader, torch.utils.data.DataLoader(first, batch_size=config.batch_size, shuffle=False,
                                                     collate_fn=_stack, pin_memory=settings["loader"]["pin_memory"])


def mixed_loaders(store: SourceStore, spectrogram: SpectrogramConfig, mix: MixOptions,
                  augment: AugmentOptions | None, batch_size: int, first_step: int, steps: int,
                  validation_steps: int | None, *, train_split: str = "train", validation_split: str = "valid",
                  target: str = "noise", loss_weighting: str = "none", loss: str = "huber",
                  accelerator: bool | None = None):
    """(training DataLoader, validation DataLoader or None) of examples mixed on the fly from `store`
    (`readers.torch_mixed.MixedDataset`) in the `spectrogram` STFT, as (x, y[, w]) float32 batches.

    Training yields the `steps` batches of global steps `first_step`, `first_step + 1`, ...: step s is
    `EpochPlan.batch_indices(s)` of `train_split` mixed with `mix` (and `augment`), the examples the
    tf.data path draws at that step, so a resumed run continues where it stopped. Validation
    (`validation_steps` batches; None: none) reads examples 0.. of `validation_split` mixed with
    `validation_mix(mix)`, the same every epoch. Workers as `loader_settings` says (the mixing
    runs in DataLoader worker processes with an accelerator, in this process on CPU)."""
    import torch
    import torch.utils.data

    from mixing.on_the_fly import EpochPlan
    from readers.mixed import validation_mix
    from readers.torch_mixed import MixedDataset, StepSampler

    if accelerator is None:
        accelerator = torch.cuda.is_available()
    settings = loader_settings(accelerator, usable_cpus())["loader"]
    common = dict(augment=augment, target=target, loss_weighting=loss_weighting, loss=loss)
    # A step's examples depend on the batch size alone; steps_per_epoch does not enter `batch_indices`.
    sampler = StepSampler(EpochPlan(steps_per_epoch=steps, batch_size=batch_size), first_step, steps)
    train = MixedDataset(store, train_split, mix, spectrogram, length=(first_step + steps) * batch_size, **common)
    train_loader = torch.utils.data.DataLoader(train, sampler=sampler, batch_size=None, **settings)
    if not validation_steps:
        return train_loader, None
    valid = MixedDataset(store, validation_split, validation_mix(mix), spectrogram,
                         length=validation_steps * batch_size, **common)
    batches = [list(range(s * batch_size, (s + 1) * batch_size)) for s in range(validation_steps)]
    return train_loader, torch.utils.data.DataLoader(valid, sampler=batches, batch_size=None,
                                                     pin_memory=settings["pin_memory"])


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def loader_settings(accelerator: bool, cpus: int) -> dict[str, Any]:
    """How the torch backend's training batches are made: {"threads": decoding threads of the
    training process (StreamDataset's `threads`), "loader": DataLoader keyword arguments}.

    With an accelerator, DataLoader worker processes decode (one per CPU, less two kept for the
    training loop and the pin-memory thread; at most 16), each batch lands in pinned memory (a
    faster, DMA copy to the GPU) and the workers stay between epochs. On CPU the training step needs
    the cores itself: up to 4 threads of this process decode ahead instead, in the gaps (numpy
    releases the GIL), with no processes to start."""
    if accelerator:
        workers = max(1, min(16, cpus - 2))
        return {"threads": 0, "loader": {"num_workers": workers, "pin_memory": True, "persistent_workers": True,
                                         "prefetch_factor": 4}}
    return {"threads": min(4, max(1, cpus)), "loader": {"num_workers": 0, "pin_memory": False}}


def _stack(examples: list[tuple]) -> tuple:
    """Collates (x, y[, w]) examples into a tuple of batched tensors (default_collate makes a list)."""
    import torch

    return tuple(torch.stack(column) for column in zip(*examples))
