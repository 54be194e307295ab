"""Examples mixed on the fly from a source store, by the dataset job's own rule (`mixing.draw`).

    store = SourceStore.open("data/sources")
    mixer = SourceMixer(store, "train", MixOptions(seed=0), window=config.window_samples)
    mixer.draw(7)                                  # a mixing.draw.Mixture: waveforms and metadata
    mixer.spectrograms(range(32), config)          # a batch in any model's STFT, as the static store holds it

Example `index` of a split is `draw_example(split, index, ...)` over the store's segments: with the
same seed, window and augmentation, and segments stored exactly (16-bit files at the store's rate),
it is the example the dataset job writes at that index, spectrograms and metadata alike. Training
draws fresh examples each epoch by numbering them on: example i of epoch e is index
`e * examples_per_epoch + i` (`EpochPlan.batch_indices` of its step), so any example of any epoch
is reached directly, which is what makes a run resumed at step k see what an uninterrupted run sees from step k on.
Validation uses indices 0.. of its split under `VALIDATION_SEED`: the same examples every epoch and
every run.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import numpy as np

from mixing.draw import Mixture, Source, SourceCache, SplitSources, draw_example
from mixing.options import AugmentOptions, MixOptions
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.schema import SPECTROGRAM_KEYS
from tfrecord_schema.sources import SourceStore
from tfrecord_schema.spectrogram import phase as spectral_phase
from tfrecord_schema.spectrogram import stft

VALIDATION_SEED = 0  # the validation split is mixed with this seed whatever the training seed
DEFAULT_CACHE_BYTES = 1 << 30  # decoded float32 segments kept per mixer (long noise files are decoded once)


class SourceMixer:
    """Draws examples of one split of a source store: waveforms (`draw`, `waveforms`) or a model's
    spectrograms (`spectrograms`). Cheap to copy into worker processes before the first draw (the
    store's segments are read then, once per process unless they were read before forking)."""

    def __init__(self, store: SourceStore, split: str, mix: MixOptions, *, window: int,
                 augment: AugmentOptions | None = None, cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive number of samples. Received: window={window!r}")
        self.store, self.split, self.mix, self.augment, self.window = store, split, mix, augment, window
        self.sample_rate = store.sample_rate
        self._cache_bytes = cache_bytes
        self._sources: SplitSources | None = None
        self._audio: SourceCache | None = None

    @classmethod
    def for_config(cls, store: SourceStore, split: str, mix: MixOptions, config: SpectrogramConfig,
                   augment: AugmentOptions | None = None, **kwargs: Any) -> "SourceMixer":
        """A mixer of `config`'s windows; ValueError when the store holds another sample rate."""
        if config.sample_rate != store.sample_rate:
            raise ValueError(
                f"The model's spectrogram is at {config.sample_rate} Hz but the source store {store.directory} holds "
                f"{store.sample_rate} Hz audio. Build the store at {config.sample_rate} Hz (`speech-enhance dataset "
                f"--kind sources --sample-rate {config.sample_rate}`) or train at {store.sample_rate} Hz.")
        return cls(store, split, mix, window=config.window_samples, augment=augment, **kwargs)

    @property
    def sources(self) -> SplitSources:
        """The split's voices (those at least a window long) and noises, read from the store on first use."""
        if self._sources is None:
            segments = self.store.segments(self.split)
            usable = [Source(s.role, s.file, s.group, s.split, s.num_samples, s.key) for s in segments
                      if s.role != "voice" or s.num_samples >= self.window]
            self._sources = SplitSources(usable, self.split, self.window)
            augment = self.augment
            if augment is not None and augment.reverb_probability and augment.rir_source != "simulated" \
                    and not self._sources.rirs:
                raise ValueError(
                    f"rir_source={augment.rir_source!r} draws recorded room impulse responses, and the {self.split!r} "
                    f"split of {self.store.directory} holds none. Build the store with --rir-dir, or use "
                    "rir_source='simulated'.")
            self._audio = SourceCache(self.store.get, self._cache_bytes)
        return self._sources

    def draw(self, index: int) -> Mixture:
        """Example `index` of the split (any non-negative integer)."""
        sources = self.sources
        return draw_example(self.split, int(index), sources, self._audio, self.mix, self.sample_rate, self.window,
                            self.augment)

    def waveforms(self, indices: Iterable[int]) -> dict[str, np.ndarray]:
        """{"mixture", "clean"}: float32 [B, window] of the examples `indices`."""
        drawn = [self.draw(i) for i in indices]
        return {"mixture": np.stack([d.mixture for d in drawn]), "clean": np.stack([d.clean for d in drawn])}

    def spectrograms(self, indices: Iterable[int], config: SpectrogramConfig, metadata: bool = False,
                     keys: Iterable[str] = SPECTROGRAM_KEYS) -> dict[str, Any]:
        """The examples `indices` as the static store holds them: "noisy_magnitude", "noisy_phase",
        "clean_magnitude", "clean_phase" as `config.dtype` [B, frames, bins] (one STFT call for the
        batch), or only the `keys` named (a model that reads magnitudes alone skips the phases, about
        a third of the time); with `metadata`, also "metadata": each example's metadata dict."""
        if config.window_samples != self.window or config.sample_rate != self.sample_rate:
            raise ValueError(f"spectrograms(): config is for {config.window_samples} samples at {config.sample_rate} Hz, "
                             f"the mixer draws {self.window} at {self.sample_rate} Hz")
        keys = tuple(keys)
        unknown = sorted(set(keys) - set(SPECTROGRAM_KEYS))
        if unknown:
            raise ValueError(f"spectrograms(): unknown keys {unknown}. Known: {list(SPECTROGRAM_KEYS)}")
        drawn = [self.draw(i) for i in indices]
        spectra = stft(np.stack([np.stack([d.mixture, d.clean]) for d in drawn]), config)  # [B, 2, frames, bins]
        computed: dict[str, np.ndarray] = {}
        for kind, convert in (("magnitude", np.abs), ("phase", spectral_phase)):
            wanted = [(k, side) for side, k in enumerate((f"noisy_{kind}", f"clean_{kind}")) if k in keys]
            if len(wanted) == 2:
                values = convert(spectra).astype(config.dtype)
                computed.update((k, values[:, side]) for k, side in wanted)
            elif wanted:
                (k, side), = wanted
                computed[k] = convert(spectra[:, side]).astype(config.dtype)
        out: dict[str, Any] = {k: computed[k] for k in SPECTROGRAM_KEYS if k in computed}
        if metadata:
            out["metadata"] = [d.metadata for d in drawn]
        return out


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """How training numbers its examples: `steps_per_epoch` batches of `batch_size` per epoch."""

    steps_per_epoch: int
    batch_size: int

    @property
    def examples_per_epoch(self) -> int:
        return self.steps_per_epoch * self.batch_size

    def batch_indices(self, step: int) -> Sequence[int]:
        """Draw indices of global training step `step` (0-based, counted over all epochs)."""
        first = step * self.batch_size
        return range(first, first + self.batch_size)
