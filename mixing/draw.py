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
import math
from typing import Callable, Protocol, Sequence

import numpy as np

from mixing import augmentation as aug
from mixing.levels import Blend, active_level, blend, is_silent, peak_limited_gain, rms
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

    role: str  # "voice" | "noise" | "rir" (a recorded room impulse response)
    file: str  # relative to its input folder
    group: str  # speaker id (voices), noise class (noises), anything (rirs)
    split: str
    num_samples: int
    key: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class NoUsableSources(ValueError):
    """A split that needs examples kept no usable voice or noise file."""


class SplitSources:
    """The usable voices, noises and recorded room impulse responses (`rirs`, maybe none) of one
    split, each ordered by file name, with window weights."""

    def __init__(self, sources: Sequence[Source], split: str, window: int) -> None:
        self.voices = sorted((s for s in sources if s.role == "voice" and s.split == split), key=lambda s: s.file)
        self.noises = sorted((s for s in sources if s.role == "noise" and s.split == split), key=lambda s: s.file)
        self.rirs = sorted((s for s in sources if s.role == "rir" and s.split == split), key=lambda s: s.file)
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
    """One drawn example: float32 waveforms of one window, and the metadata a record holds. The
    mixture is clean + noise unless a kind acting on the mixture alone (tilt, telephone band, codec,
    clipping) changed it."""

    mixture: np.ndarray
    clean: np.ndarray
    noise: np.ndarray
    metadata: dict  # the schema's metadata keys (tfrecord_schema.schema.METADATA_FEATURES)
    augmentation: dict  # its augmentation keys alone (aug.NO_AUGMENTATION's)
    silent_windows_skipped: int


def draw_example(split: str, index: int, sources: SplitSources, audio: AudioSource, options: MixOptions,
                 sample_rate: int, window: int, augment: AugmentOptions | None = None) -> Mixture:
    """Example `index` of `split`: `window` samples at `sample_rate` (Hz), drawn from `sources`.

    `augment` (default: none) adds the augmentations of `mixing.augmentation`, in the order its
    docstring gives; their draws come from children of the example's generator, so without it the
    examples are exactly those of before."""
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
        augmented = _augment(rng, augment, options.seed, (voice_src, voice_offset, voice), (noise_src, noise),
                             sources, audio, sample_rate, window)
        voice, target, noise, voice_offset, meta = (augmented[k] for k in
                                                    ("voice", "target", "noise", "voice_offset", "meta"))
        if augmented["noise_file"] is not None and augmented["meta"]["babble_talkers"]:
            noise_file, noise_offset, noise_class = augmented["noise_file"], 0, "babble"
        elif augmented["noise_file"] is not None:  # several noises: the first's offset and class stay
            noise_file = augmented["noise_file"]
        if augmented["changed_voice"]:
            voice_level = active_level(voice, sample_rate)[0]
    mixed = blend(voice, noise, level, loudness, voice_level, target=target)
    if augment is not None and augment.enabled:
        mixed = _after_blend(mixed, meta, sample_rate)
    metadata = {"example_id": f"{split}-{index:08d}", "split": split,
                "voice_file": voice_src.file, "voice_offset": voice_offset, "speaker_id": voice_src.group,
                "noise_file": noise_file, "noise_offset": noise_offset, "noise_class": noise_class,
                "noise_level": level, "snr_db": mixed.snr_db, "gain": mixed.gain, **meta}
    return Mixture(mixed.mixture, mixed.clean, mixed.noise, metadata, meta, skipped)


def _augment(rng: np.random.Generator, options: AugmentOptions, seed: int, voice_draw: tuple[Source, int, np.ndarray],
             noise_draw: tuple[Source, np.ndarray], sources: SplitSources, cache: AudioSource,
             rate: int, window: int) -> dict:
    """One example's augmentation: `voice_draw` is (voice source, offset, window), `noise_draw` (noise
    source, window). Each kind draws from its own child of `rng` (which leaves `rng`'s own stream as it
    was), so one kind on or off does not change the draws of the others. The kinds applied after
    blending are drawn here and recorded in "meta"; `_after_blend` applies them."""
    # One spawn call: a SeedSequence's first children are the same whatever their count, so kinds
    # added at the end leave the draws of the earlier ones, and the examples without them, unchanged.
    (speed_rng, reverb_rng, babble_rng, tilt_rng, lowpass_rng, rir_rng, noises_rng, mixture_tilt_rng,
     telephone_rng, clip_rng, gain_rng) = rng.spawn(11)
    voice_src, voice_offset, voice = voice_draw
    noise_src, noise = noise_draw
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
    if (not meta["babble_talkers"] and options.several_noises_probability
            and noises_rng.random() < options.several_noises_probability):
        noise, names = _several_noises(noises_rng, options, noise_src, noise, sources, cache, window)
        if names:
            out["noise_file"] = "+".join([noise_src.file, *names])
            meta["noise_count"] = 1 + len(names)
    if options.reverb_probability and reverb_rng.random() < options.reverb_probability:
        early_ms = options.early_reflections_ms if options.reverb_target == "early" else 0.0
        recorded = bool(sources.rirs) and (options.rir_source == "files" or (
            options.rir_source == "both" and rir_rng.random() < 0.5))
        if recorded:
            rir_src = sources.rirs[int(rir_rng.integers(len(sources.rirs)))]
            rir, meta["rt60"] = aug.recorded_rir(cache.get(rir_src.key), rate)
            voice, out["target"] = aug.reverberate_voice(voice, rir, early_ms, rate)
            meta["rir_file"] = rir_src.file
        else:
            rooms = aug.room_bank(seed, rate, options.rt60_range, options.room_count)
            room = rooms[int(reverb_rng.integers(len(rooms)))]
            voice, out["target"], noise = aug.reverberate(voice, noise, room, early_ms, rate)
            meta["rt60"] = room.rt60
        meta["early_reflections_ms"] = float(early_ms)
        out["changed_voice"] = True
    if options.noise_tilt_db:
        slope = round(float(tilt_rng.uniform(-options.noise_tilt_db, options.noise_tilt_db)), 2)
        noise = aug.tilt(noise, slope, rate)
        meta["noise_tilt_db_per_octave"] = slope
    if options.noise_lowpass_probability and lowpass_rng.random() < options.noise_lowpass_probability:
        cutoff = float(round(lowpass_rng.uniform(*options.noise_lowpass_hz)))
        noise = aug.lowpass(noise, cutoff, rate)
        meta["noise_lowpass_hz"] = cutoff
    _draw_after_blend(options, meta, mixture_tilt_rng, telephone_rng, clip_rng, gain_rng)
    out.update(voice=voice, noise=noise, voice_offset=voice_offset, meta=meta)
    return out


def _draw_after_blend(options: AugmentOptions, meta: dict, tilt_rng: np.random.Generator,
                      telephone_rng: np.random.Generator, clip_rng: np.random.Generator,
                      gain_rng: np.random.Generator) -> None:
    """Draws the kinds applied to the blended mixture into `meta` (their NO_AUGMENTATION keys)."""
    if options.mixture_tilt_probability and tilt_rng.random() < options.mixture_tilt_probability:
        meta["mixture_tilt_db_per_octave"] = round(float(tilt_rng.uniform(-options.mixture_tilt_db,
                                                                          options.mixture_tilt_db)), 2)
    if options.telephone_probability and telephone_rng.random() < options.telephone_probability:
        codec = options.telephone_codec
        if codec == "both":
            codec = ("ulaw", "alaw")[int(telephone_rng.integers(2))]
        meta["telephone"], meta["codec"] = 1, "" if codec == "none" else codec
    if options.clip_probability and clip_rng.random() < options.clip_probability:
        meta["clip_level_db"] = round(float(clip_rng.uniform(*options.clip_level_db)), 2)
    if options.gain_probability and gain_rng.random() < options.gain_probability:
        meta["gain_db"] = round(float(gain_rng.uniform(*options.gain_range_db)), 2)


def _after_blend(mixed: Blend, meta: dict, rate: int) -> Blend:
    """`mixed` after the kinds drawn into `meta` that act on the blended mixture: tilt, telephone
    band, codec and clipping of the mixture alone, then the gain of mixture, clean target and noise
    together, lowered where the mixture would pass PEAK_LIMIT (meta["gain_db"] is set to the gain
    applied). Nothing drawn: `mixed` itself."""
    mixture = mixed.mixture
    if meta["mixture_tilt_db_per_octave"]:
        mixture = aug.tilt(mixture, meta["mixture_tilt_db_per_octave"], rate)
    if meta["telephone"]:
        mixture = aug.telephone_band(mixture, rate)
    if meta["codec"]:
        mixture = aug.compand(mixture, meta["codec"])
    if meta["clip_level_db"]:
        mixture = aug.clip(mixture, meta["clip_level_db"])[0]
    if mixture is mixed.mixture and not meta["gain_db"]:
        return mixed
    gain = peak_limited_gain(mixture, 10.0 ** (meta["gain_db"] / 20.0))
    meta["gain_db"] = round(20.0 * math.log10(gain), 2) if gain != 1.0 else 0.0
    g = np.float32(gain)
    return Blend(mixture=mixture * g, clean=mixed.clean * g, noise=mixed.noise * g, gain=mixed.gain,
                 snr_db=mixed.snr_db)


def _several_noises(rng: np.random.Generator, options: AugmentOptions, first: Source, noise: np.ndarray,
                    sources: SplitSources, cache: AudioSource, window: int) -> tuple[np.ndarray, list[str]]:
    """(`noise` plus windows of k other noise files of the split, each scaled to the RMS of `noise`
    times a gain drawn within +- several_noises_level_db dB, ["file@offset", ...]); k + 1 is drawn
    from several_noises_count and k capped at the other files available (none: (`noise`, []))."""
    others = [s for s in sources.noises if s.file != first.file]
    k = min(int(rng.integers(options.several_noises_count[0], options.several_noises_count[1] + 1)) - 1, len(others))
    total, names, level = noise.astype(np.float32, copy=True), [], rms(noise)
    for pick in rng.choice(len(others), size=k, replace=False) if k else ():
        src = others[int(pick)]
        audio = cache.get(src.key)
        span = src.num_samples - window + 1 if src.num_samples >= window else src.num_samples
        for _ in range(20):
            offset = int(rng.integers(0, span))
            extra = _noise_window(audio, offset, window)
            if rms(extra) > 1e-6:
                break
        gain = 10.0 ** (rng.uniform(-options.several_noises_level_db, options.several_noises_level_db) / 20.0)
        if rms(extra) > 1e-6:  # a file silent at every offset tried adds nothing
            total += extra * np.float32(gain * level / rms(extra))
            names.append(f"{src.file}@{offset}")
    return total, names


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
