"""The mixing rule: one example drawn from (seed, split, example index), free of Beam and of any store.

`draw_example` picks a voice window (every second of speech equally likely, silent windows redrawn),
a noise window, a noise level and a loudness, applies the augmentations (`mixing.augmentation`) and
blends them (`mixing.levels.blend`). Its randomness comes from one `numpy.random.Generator` seeded with
(seed, split code, example index), so the same draw gives the same example on any runner, worker
or reader. The dataset job writes its spectrograms (`beam_pipelines.generation`); the on-the-fly
mixer (`mixing.on_the_fly`) draws the same examples from a source store, for any model's STFT.

Audio is reached through `audio.get(source.key)`: the dataset job's cache of decoded files, or the
source store's segments held in memory.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Callable, Protocol, Sequence

import numpy as np

from mixing import augmentation as aug
from mixing.levels import active_level, blend, is_silent, rms
from mixing.options import AugmentOptions, MixOptions
from tfrecord_schema.dataset_info import SPLITS

SPLIT_CODES = {name: i for i, name in enumerate(SPLITS)}


class AudioSource(Protocol):
    def get(self, key: str) -> np.ndarray: ...


class SourceCache:
    """Least-recently-used cache of decoded source arrays, bounded in bytes."""

    def __init__(self, load: Callable[[str], np.ndarray], max_bytes: int = 2 << 30) -> None:
        self._load = load
        self._max = max_bytes
        self._items: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> np.ndarray:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
            return item
        item = self._load(key)
        self._items[key] = item
        self._bytes += item.nbytes
        while self._bytes > self._max and len(self._items) > 1:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.nbytes
        return item


@dataclasses.dataclass(frozen=True)
class Source:
    """A usable input file after decoding: `key` is where its resampled samples are cached."""

    role: str  # "voice" | "noise"
    file: str  # relative to its input folder
    group: str  # speaker id (voices) or noise class (noises)
    split: str
    num_samples: int
    key: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class NoUsableSources(ValueError):
    """A split that needs examples kept no usable voice or noise file."""


class SplitSources:
    """The usable voices and noises of one split, ordered by file name, with window weights."""

    def __init__(self, sources: Sequence[Source], split: str, window: int) -> None:
        self.voices = sorted((s for s in sources if s.role == "voice" and s.split == split), key=lambda s: s.file)
        self.noises = sorted((s for s in sources if s.role == "noise" and s.split == split), key=lambda s: s.file)
        if not self.voices:
            raise NoUsableSources(f"No usable voice file in split {split!r}: every voice file of its speakers was "
                                  "rejected or none was assigned.")
        if not self.noises:
            raise NoUsableSources(f"No usable noise file in split {split!r}: every noise file of this split was "
                                  "rejected or none was assigned.")
        # Babble draws other speakers of the split: speaker id -> their files.
        self.by_speaker: dict[str, list[Source]] = {}
        for voice in self.voices:
            self.by_speaker.setdefault(voice.group, []).append(voice)
        # Voices are drawn in proportion to the windows they hold: every second of speech is equally likely.
        self.cumulative = np.cumsum([s.num_samples - window + 1 for s in self.voices], dtype=np.float64)


def _noise_window(noise: np.ndarray, offset: int, window: int) -> np.ndarray:
    if noise.shape[0] >= window:
        return noise[offset: offset + window]
    return np.take(noise, (offset + np.arange(window)) % noise.shape[0])  # short noises loop


@dataclasses.dataclass
class Mixture:
    """One drawn example: float32 waveforms of one window, and the metadata a record holds."""

    mixture: np.ndarray
    clean: np.ndarray
    noise: np.ndarray
    metadata: dict  # the schema's metadata keys (tfrecord_schema.schema.METADATA_FEATURES)
    augmentation: dict  # its augmentation keys alone (aug.NO_AUGMENTATION's)
    silent_windows_skipped: int


def draw_example(split: str, index: int, sources: SplitSources, audio: AudioSource, options: MixOptions,
                 sample_rate: int, window: int, augment: AugmentOptions | None = None) -> Mixture:
    """Example `index` of `split`: `window` samples at `sample_rate` (Hz), drawn from `sources`.

    `augment` (default: none) adds reverberation, babble, speed and noise colour; its draws come from
    children of the example's generator, so without it the examples are exactly those of before."""
    rng = np.random.default_rng([options.seed, SPLIT_CODES[split], index])
    level = options.draw_level(rng)
    loudness = float(rng.uniform(*options.loudness_range_dbfs))
    voice_src = voice = None
    skipped = 0
    total = sources.cumulative[-1]
    for _ in range(options.max_window_retries):
        candidate = sources.voices[int(np.searchsorted(sources.cumulative, rng.random() * total, side="right"))]
        samples = audio.get(candidate.key)
        for _ in range(options.max_window_retries):
            voice_offset = int(rng.integers(0, candidate.num_samples - window + 1))
            segment = samples[voice_offset: voice_offset + window]
            voice_level, active = active_level(segment, sample_rate)
            if not is_silent(voice_level, active):
                voice_src, voice = candidate, segment
                break
            skipped += 1
        if voice is not None:
            break
    if voice is None:
        raise ValueError(f"Could not find a non-silent voice window in split {split!r} after many tries; "
                         "are the voice files mostly silence?")
    noise = None
    for _ in range(options.max_window_retries):
        noise_src = sources.noises[int(rng.integers(0, len(sources.noises)))]
        noise_audio = audio.get(noise_src.key)
        span = noise_src.num_samples - window + 1 if noise_src.num_samples >= window else noise_src.num_samples
        noise_offset = int(rng.integers(0, span))
        candidate_noise = _noise_window(noise_audio, noise_offset, window)
        if rms(candidate_noise) > 1e-6:
            noise = candidate_noise
            break
    if noise is None:
        raise ValueError(f"Could not find a non-silent noise window in split {split!r}")
    noise_file, noise_class, target = noise_src.file, noise_src.group, None
    meta = dict(aug.NO_AUGMENTATION)
    if augment is not None and augment.enabled:
        augmented = _augment(rng, augment, options.seed, voice_src, voice_offset, voice, noise, sources, audio,
                             sample_rate, window)
        voice, target, noise, voice_offset, meta = (augmented[k] for k in
                                                    ("voice", "target", "noise", "voice_offset", "meta"))
        if augmented["noise_file"] is not None:
            noise_file, noise_offset, noise_class = augmented["noise_file"], 0, "babble"
        if augmented["changed_voice"]:
            voice_level = active_level(voice, sample_rate)[0]
    mixed = blend(voice, noise, level, loudness, voice_level, target=target)
    metadata = {"example_id": f"{split}-{index:08d}", "split": split,
                "voice_file": voice_src.file, "voice_offset": voice_offset, "speaker_id": voice_src.group,
                "noise_file": noise_file, "noise_offset": noise_offset, "noise_class": noise_class,
                "noise_level": level, "snr_db": mixed.snr_db, "gain": mixed.gain, **meta}
    return Mixture(mixed.mixture, mixed.clean, mixed.noise, metadata, meta, skipped)


def _augment(rng: np.random.Generator, options: AugmentOptions, seed: int, voice_src: Source, voice_offset: int,
             voice: np.ndarray, noise: np.ndarray, sources: SplitSources, cache: AudioSource,
             rate: int, window: int) -> dict:
    """One example's augmentation. Each kind draws from its own child of `rng` (which leaves `rng`'s
    own stream as it was), so one kind on or off does not change the draws of the others."""
    speed_rng, reverb_rng, babble_rng, tilt_rng, lowpass_rng = rng.spawn(5)
    meta = dict(aug.NO_AUGMENTATION)
    out = {"target": None, "noise_file": None, "changed_voice": False}
    if options.speed_probability and speed_rng.random() < options.speed_probability:
        factor = round(float(speed_rng.uniform(*options.speed_range)), 4)
        voice, voice_offset = aug.speed_window(cache.get(voice_src.key), voice_offset, window, factor)
        meta["speed_factor"] = factor
        out["changed_voice"] = True
    if options.babble_probability and babble_rng.random() < options.babble_probability:
        babble, names = _babble(babble_rng, options, voice_src.group, sources, cache, rate, window)
        if names:
            noise, out["noise_file"] = babble, "+".join(names)
            meta["babble_talkers"] = len(names)
    if options.reverb_probability and reverb_rng.random() < options.reverb_probability:
        rooms = aug.room_bank(seed, rate, options.rt60_range, options.room_count)
        room = rooms[int(reverb_rng.integers(len(rooms)))]
        voice, out["target"], noise = aug.reverberate(voice, noise, room, options.early_reflections_ms, rate)
        meta["rt60"], meta["early_reflections_ms"] = room.rt60, float(options.early_reflections_ms)
        out["changed_voice"] = True
    if options.noise_tilt_db:
        slope = round(float(tilt_rng.uniform(-options.noise_tilt_db, options.noise_tilt_db)), 2)
        noise = aug.tilt(noise, slope, rate)
        meta["noise_tilt_db_per_octave"] = slope
    if options.noise_lowpass_probability and lowpass_rng.random() < options.noise_lowpass_probability:
        cutoff = float(round(lowpass_rng.uniform(*options.noise_lowpass_hz)))
        noise = aug.lowpass(noise, cutoff, rate)
        meta["noise_lowpass_hz"] = cutoff
    out.update(voice=voice, noise=noise, voice_offset=voice_offset, meta=meta)
    return out


def _babble(rng: np.random.Generator, options: AugmentOptions, target_speaker: str, sources: SplitSources,
            cache: AudioSource, rate: int, window: int) -> tuple[np.ndarray, list[str]]:
    """(sum of excerpts of k other speakers of the split, each at its active level +- babble_level_db,
    ["file@offset", ...]); k is drawn from babble_talkers and capped at the speakers available. No
    other speaker: (nothing, [])."""
    others = sorted(s for s in sources.by_speaker if s != target_speaker)
    k = min(int(rng.integers(options.babble_talkers[0], options.babble_talkers[1] + 1)), len(others))
    babble, names = np.zeros(window, np.float32), []
    for speaker in rng.choice(len(others), size=k, replace=False) if k else ():
        files = sources.by_speaker[others[int(speaker)]]
        src = files[int(rng.integers(len(files)))]
        audio = cache.get(src.key)
        for _ in range(20):
            offset = int(rng.integers(0, src.num_samples - window + 1))
            excerpt = audio[offset: offset + window]
            talker_level, active = active_level(excerpt, rate)
            if not is_silent(talker_level, active):
                break
        gain = 10.0 ** (rng.uniform(-options.babble_level_db, options.babble_level_db) / 20.0) / max(talker_level, 1e-9)
        babble += excerpt * np.float32(gain)
        names.append(f"{src.file}@{offset}")
    return babble, names
