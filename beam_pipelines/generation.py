"""The per-example work of the dataset job, free of Beam: draw windows, blend, compute spectrograms
and encode records, chunk by chunk (`generate_chunk`, for a `planning.ChunkSpec`).

Every example's randomness comes from a `numpy.random.Generator` seeded with
(seed, split, example index), so the same arguments give the same examples on any runner, with any
number of workers and in any order. The Beam job and the benchmark's single-process tight loop both
call `generate_chunk`.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
from typing import Callable, Sequence

import numpy as np

from beam_pipelines import augmentation as aug
from beam_pipelines.histograms import histogram
from beam_pipelines.mixing import active_level, blend, is_silent, rms
from beam_pipelines.options import AugmentOptions, MixOptions
from beam_pipelines.planning import ChunkSpec
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.dataset_info import SPLITS
from tfrecord_schema.schema import encode
from tfrecord_schema.spectrogram import phase as spectral_phase
from tfrecord_schema.spectrogram import stft

SPLIT_CODES = {name: i for i, name in enumerate(SPLITS)}
SNR_EDGES = [float(v) for v in range(-30, 51)]  # 1 dB bins; values outside are clamped into the ends
LEVEL_EDGES = [round(0.05 * i, 2) for i in range(0, 41)]  # 0.00 .. 2.00


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


class ChunkStats:
    """What Finalize reports about a set of examples, merged chunk by chunk so that nothing grows
    with the number of examples: histograms of realised SNR and noise level, SNR minimum, sum and
    maximum (the sum with `math.fsum` per chunk, so the mean does not depend on the order of
    merging), counts. A plain dict travels between stages (`to_dict`/`from_dict`)."""

    @staticmethod
    def of_chunk(snr_db: Sequence[float], levels: Sequence[float], silent_skipped: int,
                 augmentation: Sequence[dict] = ()) -> dict:
        """`augmentation`: each example's augmentation metadata (`aug.NO_AUGMENTATION`'s keys)."""
        return {"count": len(snr_db), "snr_hist": histogram(snr_db, SNR_EDGES),
                "level_hist": histogram(levels, LEVEL_EDGES),
                "snr_min": float(min(snr_db)) if snr_db else math.inf,
                "snr_max": float(max(snr_db)) if snr_db else -math.inf,
                "snr_sums": [math.fsum(snr_db)], "silent_skipped": int(silent_skipped),
                "augment": aug.stats_of(augmentation)}

    @staticmethod
    def empty() -> dict:
        return {"count": 0, "snr_hist": [0] * (len(SNR_EDGES) - 1), "level_hist": [0] * (len(LEVEL_EDGES) - 1),
                "snr_min": math.inf, "snr_max": -math.inf, "snr_sums": [], "silent_skipped": 0,
                "augment": aug.stats_of([])}

    @staticmethod
    def merge(stats: Sequence[dict]) -> dict:
        """Merges in the order given (callers sort by chunk and shard, so the result does not depend
        on the runner's order)."""
        out = ChunkStats.empty()
        for s in stats:
            out["count"] += s["count"]
            out["snr_hist"] = [a + b for a, b in zip(out["snr_hist"], s["snr_hist"])]
            out["level_hist"] = [a + b for a, b in zip(out["level_hist"], s["level_hist"])]
            out["snr_min"] = min(out["snr_min"], s["snr_min"])
            out["snr_max"] = max(out["snr_max"], s["snr_max"])
            out["snr_sums"] = [math.fsum(out["snr_sums"] + s["snr_sums"])]
            out["silent_skipped"] += s["silent_skipped"]
            if "augment" in s:
                out["augment"] = aug.merge_stats([out["augment"], s["augment"]])
        return out

    @staticmethod
    def mean_snr(stats: dict) -> float:
        return math.fsum(stats["snr_sums"]) / max(1, stats["count"])


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


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def dump_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


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
class ChunkResult:
    records: list[bytes]
    snr_db: list[float]
    levels: list[float]
    silent_windows_skipped: int
    audio: list[tuple[str, np.ndarray, np.ndarray]]  # (example id, mixture, clean) when asked for
    augmentation: list[dict] = dataclasses.field(default_factory=list)  # each example's augmentation metadata


def generate_chunk(spec: ChunkSpec, sources: SplitSources, cache: SourceCache, options: MixOptions,
                   config: SpectrogramConfig, keep_audio: bool = False,
                   augment: AugmentOptions | None = None) -> ChunkResult:
    """Generates the `spec.count` examples of a chunk, in example-index order, as encoded records.

    `augment` (default: none) adds reverberation, babble, speed and noise colour; its draws come from
    children of the example's generator, so without it the examples are exactly those of before."""
    window = config.window_samples
    result = ChunkResult([], [], [], 0, [])
    total = sources.cumulative[-1]
    for index in range(spec.start, spec.start + spec.count):
        rng = np.random.default_rng([options.seed, SPLIT_CODES[spec.split], index])
        level = options.draw_level(rng)
        loudness = float(rng.uniform(*options.loudness_range_dbfs))
        voice_src = voice = None
        for _ in range(options.max_window_retries):
            candidate = sources.voices[int(np.searchsorted(sources.cumulative, rng.random() * total, side="right"))]
            audio = cache.get(candidate.key)
            for _ in range(options.max_window_retries):
                voice_offset = int(rng.integers(0, candidate.num_samples - window + 1))
                segment = audio[voice_offset: voice_offset + window]
                voice_level, active = active_level(segment, config.sample_rate)
                if not is_silent(voice_level, active):
                    voice_src, voice = candidate, segment
                    break
                result.silent_windows_skipped += 1
            if voice is not None:
                break
        if voice is None:
            raise ValueError(f"Could not find a non-silent voice window in split {spec.split!r} after many tries; "
                             "are the voice files mostly silence?")
        noise = None
        for _ in range(options.max_window_retries):
            noise_src = sources.noises[int(rng.integers(0, len(sources.noises)))]
            noise_audio = cache.get(noise_src.key)
            span = noise_src.num_samples - window + 1 if noise_src.num_samples >= window else noise_src.num_samples
            noise_offset = int(rng.integers(0, span))
            candidate_noise = _noise_window(noise_audio, noise_offset, window)
            if rms(candidate_noise) > 1e-6:
                noise = candidate_noise
                break
        if noise is None:
            raise ValueError(f"Could not find a non-silent noise window in split {spec.split!r}")
        noise_file, noise_class, target = noise_src.file, noise_src.group, None
        meta = dict(aug.NO_AUGMENTATION)
        if augment is not None and augment.enabled:
            augmented = _augment(rng, augment, options.seed, voice_src, voice_offset, voice, noise, sources, cache,
                                 config)
            voice, target, noise, voice_offset, meta = (augmented[k] for k in
                                                        ("voice", "target", "noise", "voice_offset", "meta"))
            if augmented["noise_file"] is not None:
                noise_file, noise_offset, noise_class = augmented["noise_file"], 0, "babble"
            if augmented["changed_voice"]:
                voice_level = active_level(voice, config.sample_rate)[0]
        mixed = blend(voice, noise, level, loudness, voice_level, target=target)
        spec_pair = stft(np.stack([mixed.mixture, mixed.clean]), config)
        magnitude = np.abs(spec_pair)
        phase = spectral_phase(spec_pair)
        example_id = f"{spec.split}-{index:08d}"
        result.records.append(encode({
            "noisy_magnitude": magnitude[0], "noisy_phase": phase[0],
            "clean_magnitude": magnitude[1], "clean_phase": phase[1],
            "example_id": example_id, "split": spec.split,
            "voice_file": voice_src.file, "voice_offset": voice_offset, "speaker_id": voice_src.group,
            "noise_file": noise_file, "noise_offset": noise_offset, "noise_class": noise_class,
            "noise_level": level, "snr_db": mixed.snr_db, "gain": mixed.gain, **meta,
        }, config))
        result.augmentation.append(meta)
        result.snr_db.append(mixed.snr_db)
        result.levels.append(level)
        if keep_audio:
            result.audio.append((example_id, mixed.mixture, mixed.clean))
    return result


def _augment(rng: np.random.Generator, options: AugmentOptions, seed: int, voice_src: Source, voice_offset: int,
             voice: np.ndarray, noise: np.ndarray, sources: SplitSources, cache: SourceCache,
             config: SpectrogramConfig) -> dict:
    """One example's augmentation. Each kind draws from its own child of `rng` (which leaves `rng`'s
    own stream as it was), so one kind on or off does not change the draws of the others."""
    speed_rng, reverb_rng, babble_rng, tilt_rng, lowpass_rng = rng.spawn(5)
    rate, window = config.sample_rate, config.window_samples
    meta = dict(aug.NO_AUGMENTATION)
    out = {"target": None, "noise_file": None, "changed_voice": False}
    if options.speed_probability and speed_rng.random() < options.speed_probability:
        factor = round(float(speed_rng.uniform(*options.speed_range)), 4)
        voice, voice_offset = aug.speed_window(cache.get(voice_src.key), voice_offset, window, factor)
        meta["speed_factor"] = factor
        out["changed_voice"] = True
    if options.babble_probability and babble_rng.random() < options.babble_probability:
        babble, names = _babble(babble_rng, options, voice_src.group, sources, cache, config)
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
            cache: SourceCache, config: SpectrogramConfig) -> tuple[np.ndarray, list[str]]:
    """(sum of excerpts of k other speakers of the split, each at its active level +- babble_level_db,
    ["file@offset", ...]); k is drawn from babble_talkers and capped at the speakers available. No
    other speaker: (nothing, [])."""
    window = config.window_samples
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
            talker_level, active = active_level(excerpt, config.sample_rate)
            if not is_silent(talker_level, active):
                break
        gain = 10.0 ** (rng.uniform(-options.babble_level_db, options.babble_level_db) / 20.0) / max(talker_level, 1e-9)
        babble += excerpt * np.float32(gain)
        names.append(f"{src.file}@{offset}")
    return babble, names
