"""Evaluation items: paired noisy/clean files, or seeded mixtures of held-out voices and noises.

`paired_items` matches noisy and clean files by relative path; `make_mixtures` mixes voices and
noises at given SNRs with `mixing.levels.mix_at_snr`, each item from its own seeded
generator, so the set depends only on the folders and the seed. Noise classes come from
`beam_pipelines.splits.noise_classes`, the dataset job's lookup (classes.tsv, ESC-50's
meta/esc50.csv, else the parent folder). `screen_items` sets aside items that cannot be scored
meaningfully (`degenerate_reason`), each with its reason.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import zlib
from typing import Any, Mapping, Sequence

import numpy as np

from mixing.levels import SILENCE_DBFS, energy, mix_at_snr
from beam_pipelines.splits import noise_classes
from beam_pipelines.audio import AudioError
from predictor import audio_io
from predictor.evaluation.options import EvaluateOptions
from tfrecord_schema import paths

logger = logging.getLogger(__name__)

# Items are screened before scoring (see `degenerate_reason`).
MIN_CLEAN_DBFS = -80.0  # mean power of the clean reference; quieter counts as silent (digital silence, dither)
MAX_INPUT_SNR_DB = 60.0  # a noisy input closer to the clean than this holds no noise to remove
# A drawn voice segment whose mean power is below this is redrawn (the dataset job's silence level).
_MIN_VOICE_POWER = 10.0 ** (SILENCE_DBFS / 10.0)

@dataclasses.dataclass
class Item:
    """One evaluation example: float32 mono `clean` and `noisy` of equal length at the eval rate.

    `snr_db` is the input SNR, 10 log10(sum clean^2 / sum (noisy - clean)^2); `snr_bin` the bin it
    is reported under (the SNR it was mixed at, or the nearest bin for paired files).
    """

    item_id: str
    clean: np.ndarray
    noisy: np.ndarray
    snr_db: float
    snr_bin: float
    noise_class: str
    source: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Why the item's files could not be read (then `clean` and `noisy` are empty): it is skipped and
    # listed with this reason, like the other unscorable items, instead of stopping the evaluation.
    unreadable: str | None = None



@functools.lru_cache(maxsize=64)
def load_mono(path: str, sample_rate: int) -> np.ndarray:
    """A file as mono float32 at `sample_rate` (channels averaged); cached, as mixtures reuse files."""
    audio = audio_io.read_audio(path)
    mono = audio.samples.mean(axis=1)
    mono = audio_io.resample(mono, audio.sample_rate, sample_rate)
    mono.setflags(write=False)
    return mono



def input_snr(clean: np.ndarray, noisy: np.ndarray) -> float:
    """10 log10(sum clean^2 / sum (noisy - clean)^2) in dB."""
    return float(10.0 * np.log10(max(energy(clean), 1e-20) / max(energy(noisy - clean), 1e-20)))


def make_mixtures(voice_dir: str, noise_dir: str, *, snrs: Sequence[float] = EvaluateOptions.snrs,
                  num_mixtures: int = EvaluateOptions.num_mixtures, duration: float = EvaluateOptions.duration,
                  sample_rate: int = 8000, seed: int = EvaluateOptions.seed,
                  balance: bool = EvaluateOptions.balance) -> list[Item]:
    """`num_mixtures` mixtures per SNR in `snrs` (dB) from the files of `voice_dir` and `noise_dir`.

    Item `snr{snr:+g}-{i}` draws, from a generator seeded with (seed, crc32 of its id): a voice file
    and a segment of at most `duration` seconds, a noise file and a segment of the same length
    (looped if the noise is shorter). With `balance`, the voice file is drawn from a speech corpus
    drawn first, each corpus (top folder of `voice_dir`, `domain_of`) as likely as another, and the
    noise file likewise from a noise group (top folder of `noise_dir`), so that small corpora and
    groups are scored on as many items as large ones. The noise is scaled so that 10 log10(sum clean^2 / sum noise^2)
    equals the SNR exactly and, if the mixture would clip, both are scaled down together
    (`mixing.levels.mix_at_snr`). Voice segments quieter than -60 dBFS are redrawn.
    """
    if num_mixtures < 1 or not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"num_mixtures and duration must be positive (and finite). Received: "
                         f"num_mixtures={num_mixtures}, duration={duration}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:  # numpy seeds are non-negative
        raise ValueError(f"seed must be a non-negative integer. Received: seed={seed!r}")
    _, voices = audio_io.find_audio_files(voice_dir)
    _, noises = audio_io.find_audio_files(noise_dir)
    classes = noise_classes(noise_dir, noises)
    voice_pools, noise_pools = (_pools(files) if balance else [files] for files in (voices, noises))
    max_samples = max(1, int(round(duration * sample_rate)))
    items = []
    for snr in snrs:
        for index in range(num_mixtures):
            item_id = f"snr{snr:+g}-{index:04d}"
            rng = np.random.default_rng([seed, zlib.crc32(item_id.encode("utf-8"))])
            clean, voice_rel, voice_offset = _draw_voice(rng, voice_dir, voice_pools, max_samples, sample_rate, item_id)
            noise, noise_rel, noise_offset = _draw_noise(rng, noise_dir, noise_pools, clean.shape[0], sample_rate,
                                                         item_id)
            clean, mixture = mix_at_snr(clean, noise, snr)
            items.append(Item(
                item_id=item_id, clean=clean.astype(np.float32), noisy=mixture.astype(np.float32),
                snr_db=input_snr(clean, mixture), snr_bin=float(snr), noise_class=classes[noise_rel],
                source={"voice_file": voice_rel, "voice_offset": voice_offset, "noise_file": noise_rel,
                        "noise_offset": noise_offset}))
    return items


def domain_of(rel_path: str) -> str:
    """The domain of a file relative to an input folder: its top folder (a speech corpus, a noise
    group), or "all" for a file at the top."""
    head, sep, _ = rel_path.partition("/")
    return head if sep else "all"


def item_domains(source: Mapping[str, Any]) -> dict[str, str]:
    """{"voice_corpus", "noise_group"} of an item from its `source`: the top folders (`domain_of`) of
    its voice and noise files, or of its clean and noisy files for paired items."""
    voice = source.get("voice_file", source.get("clean_file", ""))
    noise = source.get("noise_file", source.get("noisy_file", ""))
    return {"voice_corpus": domain_of(voice), "noise_group": domain_of(noise)}


def _pools(files: Sequence[str]) -> list[list[str]]:
    """The files grouped by `domain_of`, groups in name order."""
    groups: dict[str, list[str]] = {}
    for rel in files:
        groups.setdefault(domain_of(rel), []).append(rel)
    return [groups[name] for name in sorted(groups)]


def _draw_file(rng, pools: list[list[str]]) -> str:
    """A pool (drawn only when there are several, so one pool draws as a plain list always did), then a file."""
    pool = pools[int(rng.integers(len(pools)))] if len(pools) > 1 else pools[0]
    return pool[int(rng.integers(len(pool)))]


def _draw_voice(rng, root, pools, max_samples, rate, item_id, tries=10):
    for _ in range(tries):
        rel = _draw_file(rng, pools)
        voice = load_mono(paths.join(root, rel), rate)
        n = min(voice.shape[0], max_samples)
        offset = int(rng.integers(voice.shape[0] - n + 1))
        segment = voice[offset: offset + n]
        if energy(segment) / n > _MIN_VOICE_POWER:
            return segment.astype(np.float32), rel, offset
    raise ValueError(f"{item_id}: no voice segment above {SILENCE_DBFS:g} dBFS after {tries} draws from {root!r}; "
                     "are the voice files silent?")


def _draw_noise(rng, root, pools, length, rate, item_id, tries=10):
    for _ in range(tries):
        rel = _draw_file(rng, pools)
        noise = load_mono(paths.join(root, rel), rate)
        if noise.shape[0] < length:
            noise = np.tile(noise, -(-length // noise.shape[0]))
        offset = int(rng.integers(noise.shape[0] - length + 1))
        segment = noise[offset: offset + length]
        if energy(segment) > 0:
            return segment.astype(np.float32), rel, offset
    raise ValueError(f"{item_id}: only silent noise segments after {tries} draws from {root!r}")


def paired_items(noisy_dir: str, clean_dir: str, *, sample_rate: int = 8000,
                 snr_bins: Sequence[float] = EvaluateOptions.snrs) -> list[Item]:
    """Items from noisy files and the clean files at the same relative path (any audio extension).

    Both are downmixed to mono and resampled to `sample_rate`; lengths are cut to the shorter one.
    Each item is binned at the nearest of `snr_bins` to its measured input SNR; its noise class
    comes from `noise_classes(noisy_dir, ...)`. Noisy files without a clean twin are skipped. A pair
    whose noisy or clean file cannot be read (`AudioError`: not audio, empty, NaN samples) becomes an
    item with `unreadable` set, which `screen_items` skips and lists with that reason.
    """
    _, noisy_files = audio_io.find_audio_files(noisy_dir)
    _, clean_files = audio_io.find_audio_files(clean_dir)
    clean_by_stem = {os.path.splitext(rel)[0]: rel for rel in clean_files}
    classes = noise_classes(noisy_dir, noisy_files)
    items, missing = [], []
    for rel in noisy_files:
        clean_rel = clean_by_stem.get(os.path.splitext(rel)[0])
        if clean_rel is None:
            missing.append(rel)
            continue
        source = {"noisy_file": rel, "clean_file": clean_rel}
        try:
            noisy = load_mono(paths.join(noisy_dir, rel), sample_rate)
            clean = load_mono(paths.join(clean_dir, clean_rel), sample_rate)
        except AudioError as err:  # undecodable, empty or NaN audio: this item only, not the whole run
            empty = np.zeros(0, np.float32)
            items.append(Item(item_id=os.path.splitext(rel)[0], clean=empty, noisy=empty, snr_db=math.nan,
                              snr_bin=math.nan, noise_class=classes[rel], source=source,
                              unreadable=f"cannot be read: {err}"))
            continue
        n = min(noisy.shape[0], clean.shape[0])
        if noisy.shape[0] != clean.shape[0]:
            logger.warning("%s: noisy and clean lengths differ (%d, %d samples); both cut to %d",
                           rel, noisy.shape[0], clean.shape[0], n)
            # kept so that a skip for length can say which file was short
            source["uncut_seconds"] = {"noisy": noisy.shape[0] / sample_rate, "clean": clean.shape[0] / sample_rate}
        noisy, clean = noisy[:n].astype(np.float32), clean[:n].astype(np.float32)
        snr = input_snr(clean, noisy)
        snr_bin = float(min(snr_bins, key=lambda b: abs(b - snr)))
        items.append(Item(item_id=os.path.splitext(rel)[0], clean=clean, noisy=noisy, snr_db=snr, snr_bin=snr_bin,
                          noise_class=classes[rel], source=source))
    if missing:
        logger.warning("%d noisy files have no clean file at the same relative path in %s, e.g. %s; skipped",
                       len(missing), clean_dir, missing[0])
    if not items:
        raise FileNotFoundError(f"No noisy file in {noisy_dir!r} has a clean twin in {clean_dir!r} "
                                "(matched by relative path without extension).")
    return items


def degenerate_reason(item: Item, sample_rate: int, min_samples: int = 0) -> str | None:
    """Why `item` cannot be scored meaningfully, or None when it can.

    Refused: files that could not be read (`Item.unreadable`); non-finite samples; fewer than
    `min_samples` samples (one model window: the reference recipe returns silence for such an item,
    which PESQ cannot score, and STOI needs about 0.4 s of speech); a clean reference quieter than MIN_CLEAN_DBFS (SI-SDR, PESQ and STOI compare against
    it); a silent noisy input; and an input SNR above MAX_INPUT_SNR_DB (noisy equal to clean: its
    SI-SDR is some +200 dB, so every system's SI-SDR improvement on it is hugely negative).
    """
    if item.unreadable:
        return item.unreadable
    n = item.noisy.shape[0]
    if item.clean.shape != item.noisy.shape:
        return f"clean and noisy differ in shape ({item.clean.shape} and {item.noisy.shape})"
    if not (np.isfinite(item.clean).all() and np.isfinite(item.noisy).all()):
        return "holds non-finite samples (NaN or infinity)"
    if n == 0:
        return "empty (0 samples)"
    if n < min_samples:
        reason = (f"{n / sample_rate:.3f} s long, shorter than one model window ({min_samples / sample_rate:.3f} s): "
                  "the reference recipe returns silence for it and PESQ/STOI cannot score so little audio")
        uncut = item.source.get("uncut_seconds")
        if uncut:
            reason += (f"; it was cut to the shorter of its noisy file ({uncut['noisy']:.3f} s) and clean file "
                       f"({uncut['clean']:.3f} s): is the clean file the right one?")
        return reason
    if energy(item.clean) == 0.0:
        return "the clean reference is silent (all zeros)"
    clean_dbfs = 10.0 * math.log10(energy(item.clean) / n)
    if clean_dbfs < MIN_CLEAN_DBFS:
        return f"the clean reference is silent ({clean_dbfs:.1f} dBFS mean power, below {MIN_CLEAN_DBFS:g} dBFS)"
    if energy(item.noisy) == 0.0:
        return "the noisy input is silent"
    if item.snr_db > MAX_INPUT_SNR_DB:
        return (f"the noisy input is (nearly) identical to the clean reference (input SNR {item.snr_db:.1f} dB, "
                f"above {MAX_INPUT_SNR_DB:g} dB): there is no noise to remove")
    return None


def describe_source(source: Mapping[str, Any]) -> str:
    names = [f"{key.replace('_file', '')} {source[key]}" for key in ("noisy_file", "clean_file", "voice_file",
                                                                     "noise_file") if key in source]
    return ", ".join(names) or "no source file"


def screen_items(items: Sequence[Item], sample_rate: int,
                 min_samples: int = 0) -> tuple[list[Item], list[dict[str, Any]]]:
    """Splits `items` into those to score and the skipped ones ({"id", "reason", "source"}).

    Each skipped item is logged as a warning naming its files (see `degenerate_reason`).
    """
    kept, skipped = [], []
    for item in items:
        reason = degenerate_reason(item, sample_rate, min_samples)
        if reason is None:
            kept.append(item)
            continue
        logger.warning("skipping item %s (%s): %s", item.item_id, describe_source(item.source), reason)
        skipped.append({"id": item.item_id, "reason": reason, "source": item.source})
    return kept, skipped
