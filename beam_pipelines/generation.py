"""The per-example work of the dataset job, free of Beam: each example drawn by the mixing rule
(`mixing.draw.draw_example`), its spectrograms computed and encoded, chunk by chunk (`generate_chunk`,
for a `planning.ChunkSpec`), with the statistics dataset_info.json reports and the cache of decoded
inputs.

Every example's randomness comes from a `numpy.random.Generator` seeded with
(seed, split, example index), so the same arguments give the same examples on any runner, with any
number of workers and in any order. The Beam job and the benchmark's single-process tight loop both
call `generate_chunk`.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Sequence

import numpy as np

from beam_pipelines.planning import ChunkSpec
from mixing import augmentation as aug
from mixing.draw import SourceCache, SplitSources, draw_example
from mixing.histograms import histogram
from mixing.options import AugmentOptions, MixOptions
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.schema import encode
from tfrecord_schema.spectrogram import phase as spectral_phase
from tfrecord_schema.spectrogram import stft

SNR_EDGES = [float(v) for v in range(-30, 51)]  # 1 dB bins; values outside are clamped into the ends
LEVEL_EDGES = [round(0.05 * i, 2) for i in range(0, 41)]  # 0.00 .. 2.00


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


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def dump_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


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
    """Generates the `spec.count` examples of a chunk, in example-index order, as encoded records
    (`mixing.draw.draw_example`, then the spectrograms of `config`)."""
    result = ChunkResult([], [], [], 0, [])
    for index in range(spec.start, spec.start + spec.count):
        drawn = draw_example(spec.split, index, sources, cache, options, config.sample_rate, config.window_samples,
                             augment)
        result.silent_windows_skipped += drawn.silent_windows_skipped
        spec_pair = stft(np.stack([drawn.mixture, drawn.clean]), config)
        magnitude = np.abs(spec_pair)
        phase = spectral_phase(spec_pair)
        result.records.append(encode({
            "noisy_magnitude": magnitude[0], "noisy_phase": phase[0],
            "clean_magnitude": magnitude[1], "clean_phase": phase[1], **drawn.metadata}, config))
        result.augmentation.append(drawn.augmentation)
        result.snr_db.append(drawn.metadata["snr_db"])
        result.levels.append(drawn.metadata["noise_level"])
        if keep_audio:
            result.audio.append((drawn.metadata["example_id"], drawn.mixture, drawn.clean))
    return result
