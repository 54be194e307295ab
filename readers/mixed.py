"""Examples mixed on the fly from a source store, read by index: a grain data source, and the core of
the PyTorch dataset `readers.torch_mixed.MixedDataset` (no TensorFlow).

    import grain
    from readers.mixed import MixedSource

    store = SourceStore.open("data/sources")
    source = MixedSource(store, "train", MixOptions(seed=0), SpectrogramConfig(), length=100_000)
    source[7]                                  # (x, y) float32 [frames, bins, 1]: example 7 of the split
    ds = grain.MapDataset.source(source).batch(32)

Item i is example i of the split (`mixing.on_the_fly.SourceMixer`, draw index i): for a store holding
exactly the files a spectrogram dataset was built from (16-bit, at its rate), with the same seed and
augmentation, item i is that dataset's example i of the split, spectrograms, model inputs and targets
alike. Training numbers its examples on over the epochs (`mixing.on_the_fly.EpochPlan`: step s is
items s * batch .. (s + 1) * batch - 1); validation reads items 0.. of its split under
`mixing.on_the_fly.VALIDATION_SEED` (`validation_mix`).

Every thread draws with its own mixer (the mixer's cache of decoded sources is not shared), and the
store's segments are read when the source is made: before DataLoader forks its workers, so each
process reads them once at most.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import threading
from typing import Any, Iterable, Sequence

import numpy as np

from mixing.on_the_fly import DEFAULT_CACHE_BYTES, VALIDATION_SEED, SourceMixer
from mixing.options import AugmentOptions, MixOptions
from readers.store import check_reader_loss, model_io, model_keys
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.sources import SourceStore
from trainer.targets import check_loss_weighting, check_target

OUTPUTS = ("model", "spectrograms", "waveforms")


def validation_mix(mix: MixOptions) -> MixOptions:
    """`mix` with the seed validation is mixed with (`VALIDATION_SEED`, whatever the training seed)."""
    return dataclasses.replace(mix, seed=VALIDATION_SEED)


class MixedSource:
    """grain `RandomAccessDataSource` of examples mixed on the fly from one split of a source store.

    Args:
        store: the open `SourceStore`.
        split: "train", "valid" or "test".
        mix: the mixing options (seed, levels); `validation_mix(mix)` for validation.
        config: the model's spectrogram (its sample rate must be the store's).
        length: the number of items (examples 0..length-1 of the split).
        augment: augmentations, as the dataset job's (default none).
        output: "model" for (x, y) float32 [frames, bins, 1] (or (x, y, weights) with
            loss_weighting="magnitude"), as `readers.store.model_io` makes them from a record;
            "spectrograms" for a dict of the four spectrograms (`config.dtype` [frames, bins]) and
            the metadata a record holds; "waveforms" for {"mixture", "clean"} float32 [window].
        target, loss_weighting, loss: as `readers.grain_source.RecordSource`.
        cache_bytes: decoded sources each thread's mixer keeps (bytes).
    """

    def __init__(self, store: SourceStore, split: str, mix: MixOptions, config: SpectrogramConfig, *, length: int,
                 augment: AugmentOptions | None = None, output: str = "model", target: str = "noise",
                 loss_weighting: str = "none", loss: str = "huber", cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if not isinstance(store, SourceStore):
            raise TypeError(f"store must be an open SourceStore (tfrecord_schema.sources.SourceStore.open(DIR)). "
                            f"Received: store={store!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}. Received: output={output!r}")
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise ValueError(f"length must be a non-negative integer (examples to read). Received: length={length!r}")
        self.store, self.split, self.mix, self.config, self.augment = store, split, mix, config, augment
        self.length, self.output, self.cache_bytes = length, output, cache_bytes
        self.target, self.loss_weighting = check_target(target), check_loss_weighting(loss_weighting)
        self.loss = check_reader_loss(loss)
        # Checks the rate and the split's sources now, and reads the store's segments before any fork.
        self._first = SourceMixer.for_config(store, split, mix, config, augment=augment, cache_bytes=cache_bytes)
        self._first.sources
        self._reset()

    def _reset(self) -> None:
        self._pid, self._local, self._lock = os.getpid(), threading.local(), threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("_local", "_lock"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def mixer(self) -> SourceMixer:
        """This thread's mixer (made on first use in each thread of each process)."""
        if self._pid != os.getpid():  # a forked worker: no lock held by a thread that did not come along
            self._reset()
        mixer = getattr(self._local, "mixer", None)
        if mixer is None:
            with self._lock:
                mixer, self._first = self._first, None
            if mixer is None:
                mixer = SourceMixer.for_config(self.store, self.split, self.mix, self.config, augment=self.augment,
                                               cache_bytes=self.cache_bytes)
            self._local.mixer = mixer
        return mixer

    def __len__(self) -> int:
        return self.length

    def position(self, i: Any) -> int:
        """`i` as an example index in 0..length-1, by Python's sequence rules (negative: from the end);
        a non-integer is a TypeError, out of range an IndexError."""
        try:
            i = operator.index(i)
        except TypeError:
            raise TypeError(f"example indices must be integers, not {type(i).__name__}. Received: {i!r}") from None
        if not -self.length <= i < self.length:
            raise IndexError(f"example index out of range: {i} (this source holds {self.length} examples)")
        return i % self.length

    def batch(self, indices: Iterable[Any]) -> Any:
        """The examples `indices` at once (one STFT call): a tuple of [B, ...] arrays for "model", a
        dict of [B, ...] arrays (and "metadata": a list of dicts) otherwise."""
        positions = [self.position(i) for i in indices]
        mixer = self.mixer()
        if self.output == "waveforms":
            return mixer.waveforms(positions)
        if self.output == "spectrograms":
            return mixer.spectrograms(positions, self.config, metadata=True)
        spectra = mixer.spectrograms(positions, self.config, keys=model_keys(self.target, self.loss))
        return model_io(spectra, self.config, self.target, self.loss_weighting, self.loss)

    def examples(self, indices: Sequence[Any]) -> list[Any]:
        """The examples `indices` one by one, computed as one batch."""
        return split_batch(self.batch(indices), len(indices))

    def __getitem__(self, index: int) -> Any:
        return self.examples([index])[0]

    def __repr__(self) -> str:
        return (f"MixedSource(store_dir={self.store.directory!r}, split={self.split!r}, mix={self.mix!r}, "
                f"augment={self.augment!r}, config={self.config!r}, output={self.output!r}, target={self.target!r}, "
                f"loss_weighting={self.loss_weighting!r}, loss={self.loss!r}, len={self.length})")


def split_batch(batch: Any, count: int) -> list[Any]:
    """`MixedSource.batch`'s output as `count` single examples: tuples of arrays, or dicts (for
    spectrograms, the four arrays and the example's metadata keys)."""
    if isinstance(batch, tuple):
        return [tuple(np.ascontiguousarray(a[b]) for a in batch) for b in range(count)]
    arrays = {k: v for k, v in batch.items() if k != "metadata"}
    metadata = batch.get("metadata") or [{}] * count
    return [{**{k: np.ascontiguousarray(v[b]) for k, v in arrays.items()}, **metadata[b]} for b in range(count)]

