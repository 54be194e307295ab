"""Scoring denoisers side by side on held-out audio: per item, per input-SNR bin, per noise class.

`run_evaluation` is the whole evaluation; its steps live in modules of their own and are
importable from here too:

    eval_items    items from paired folders (`paired_items`) or seeded mixtures (`make_mixtures`),
                  and the screening of items that cannot be scored (`degenerate_reason`)
    eval_systems  the systems compared (`System`, `model_systems`, `baseline_systems`)
    eval_scoring  `evaluate` (every system on every item, scored with `predictor.metrics`) and
                  `aggregate` (means per system, SNR bin and noise class)
    eval_report   `write_report`: results.json, results.md and PNG plots

Items that cannot be scored meaningfully (shorter than one model window, a silent clean reference,
a noisy file that holds no noise) are skipped with a warning and listed with their reason in the
report; a metric that fails on one item of one system is left out of the means and listed too,
so one bad file never costs the whole run and never silently moves an average.

Input and output folders may be local or remote (gs://...): files are listed, read and written
through `tfrecord_schema.paths` (the report's files whole, with `paths.write_atomic`).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

from beam_pipelines.mixing import PEAK_LIMIT
from predictor import audio_io
from predictor.eval_items import (DEFAULT_SNRS, MAX_INPUT_SNR_DB, MIN_CLEAN_DBFS, Item, degenerate_reason,
                                  describe_source, input_snr, load_mono, make_mixtures, noise_classes, paired_items,
                                  screen_items)
from predictor.eval_report import markdown_report, pick_examples, write_report
from predictor.eval_scoring import METRICS, aggregate, evaluate
from predictor.eval_systems import System, baseline_systems, model_systems
from tfrecord_schema import paths
from tfrecord_schema.config import SpectrogramConfig

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_SNRS", "MAX_INPUT_SNR_DB", "METRICS", "MIN_CLEAN_DBFS", "PEAK_LIMIT", "Item", "System",
           "aggregate", "baseline_systems", "degenerate_reason", "describe_source", "evaluate", "input_snr",
           "load_mono", "make_mixtures", "markdown_report", "model_systems", "noise_classes", "paired_items",
           "pick_examples", "run_evaluation", "screen_items", "write_report"]


def run_evaluation(output_dir: str, *, models: Mapping[str, str] | None = None, noisy_dir: str | None = None,
                   clean_dir: str | None = None, voice_dir: str | None = None, noise_dir: str | None = None,
                   snrs: Sequence[float] = DEFAULT_SNRS, num_mixtures: int = 20, duration: float = 4.0,
                   seed: int = 0, sample_rate: int | None = None, systems: Sequence[str] | None = None,
                   reference_recipe: bool = True, with_pesq: bool = True, with_stoi: bool = True,
                   batch_size: int | None = None, overlap: float = 0.5, num_examples: int = 3,
                   save_audio: bool = False) -> dict[str, Any]:
    """Builds the items and systems, scores them and writes the report; returns the results.

    Items come from `noisy_dir` + `clean_dir` or from `voice_dir` + `noise_dir` (see `paired_items`,
    `make_mixtures`). `models` maps a system name to a model directory; all models must share one
    sample rate, which is the evaluation rate (else `sample_rate`, 8000 Hz by default). `systems`
    keeps only the systems of those names. Items shorter than one model window, or otherwise
    degenerate (`degenerate_reason`), are skipped and listed in the report; `duration` (seconds)
    must therefore be at least one window. With `save_audio`, the example items' clean, noisy and
    estimated signals are written as wav under output_dir/audio/ITEM/. The input folders and
    `output_dir` may be local or remote (gs://...).
    """
    paired = noisy_dir is not None or clean_dir is not None
    mixed = voice_dir is not None or noise_dir is not None
    if paired == mixed or (paired and not (noisy_dir and clean_dir)) or (mixed and not (voice_dir and noise_dir)):
        raise ValueError("Give either noisy_dir and clean_dir (paired files) or voice_dir and noise_dir "
                         f"(mixtures made here). Received: noisy_dir={noisy_dir!r}, clean_dir={clean_dir!r}, "
                         f"voice_dir={voice_dir!r}, noise_dir={noise_dir!r}")
    all_systems: list[System] = []
    config = None
    for name, directory in (models or {}).items():
        found, model_config = model_systems(name, directory, batch_size=batch_size, overlap=overlap,
                                            reference_recipe=reference_recipe)
        if config is not None and model_config.sample_rate != config.sample_rate:
            raise ValueError(f"All models must share one sample rate. Received: {config.sample_rate} Hz and "
                             f"{model_config.sample_rate} Hz ({directory})")
        config = config or model_config
        all_systems += found
    if config is None:
        config = SpectrogramConfig.for_sample_rate(sample_rate or 8000)
    elif sample_rate and sample_rate != config.sample_rate:
        raise ValueError(f"sample_rate must be left out (None) or equal the models' rate, {config.sample_rate} Hz. "
                         f"Received: sample_rate={sample_rate}. Leave it out to evaluate at the models' rate.")
    base = baseline_systems(config)
    all_systems = base[:1] + all_systems + base[1:]
    if systems:
        unknown = sorted(set(systems) - {s.name for s in all_systems})
        if unknown:
            raise ValueError(f"systems must name systems of this evaluation; {unknown} are not among them. "
                             f"Received: systems={list(systems)}. Available: {[s.name for s in all_systems]}")
        all_systems = [s for s in all_systems if s.name in set(systems)]
    rate = config.sample_rate
    if mixed and duration * rate < config.window_samples:
        # Every mixture would be shorter than one model window, and every one would be skipped.
        window_seconds = config.window_samples / rate
        raise ValueError(
            f"duration must be at least one model window, {window_seconds:.3f} s at {rate} Hz: "
            "shorter items cannot be scored (the reference recipe returns silence for them and PESQ/STOI need "
            f"more audio). Received: duration={duration}. Use duration={math.ceil(window_seconds * 100) / 100:g} "
            "or more.")
    if paired:
        items = paired_items(noisy_dir, clean_dir, sample_rate=rate, snr_bins=snrs)
        source = {"kind": "pairs", "noisy_dir": noisy_dir, "clean_dir": clean_dir, "snr_bins": list(snrs)}
    else:
        items = make_mixtures(voice_dir, noise_dir, snrs=snrs, num_mixtures=num_mixtures, duration=duration,
                              sample_rate=rate, seed=seed)
        source = {"kind": "mixtures", "voice_dir": voice_dir, "noise_dir": noise_dir, "snrs": list(snrs),
                  "num_mixtures": num_mixtures, "duration": duration, "seed": seed}
    logger.info("evaluating %d systems on %d items (%.1f s of audio at %d Hz)", len(all_systems), len(items),
                sum(it.noisy.shape[0] for it in items) / rate, rate)
    examples = pick_examples([it for it in items if degenerate_reason(it, rate, config.window_samples) is None],
                             num_examples)
    results = evaluate(items, all_systems, rate, with_pesq=with_pesq, with_stoi=with_stoi, keep_outputs=examples,
                       min_samples=config.window_samples)
    model_names = [s.name for s in all_systems if s.name in (models or {})]
    example_system = model_names[0] if model_names else ("oracle" if any(s.name == "oracle" for s in all_systems)
                                                         else all_systems[-1].name)
    written = write_report(results, items, output_dir, config=config, example_system=example_system,
                           num_examples=num_examples, extra={"source": source, "spectrogram": config.to_dict()})
    if save_audio:
        by_id = {it.item_id: it for it in items}
        for item_id, estimates in results["outputs"].items():
            folder = paths.join(output_dir, "audio", item_id)
            signals = {"clean": by_id[item_id].clean, **estimates}
            for name, signal in signals.items():
                audio_io.write_audio_atomic(paths.join(folder, f"{name}.wav"), signal[:, None], rate, "FLOAT")
        written["audio"] = paths.join(output_dir, "audio")
    results = {k: v for k, v in results.items() if k != "outputs"}
    results["paths"] = written
    return results
