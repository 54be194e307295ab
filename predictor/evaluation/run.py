"""`run_evaluation`: scoring denoisers side by side on held-out audio, per item, per input-SNR bin and
per noise class.

Its steps live in the modules beside it:

    items     items from paired folders (`paired_items`) or seeded mixtures (`make_mixtures`), and
              the screening of items that cannot be scored (`degenerate_reason`)
    systems   the systems compared (`System`, `model_systems`, `baseline_systems`, `snmf_system`,
              `peer_systems`)
    scoring   `evaluate` (every system on every item, scored with `metrics`) and `aggregate` (means
              per system, SNR bin and noise class)
    report    `write_report`: results.json, results.md and PNG plots

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
import re
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from predictor import audio_io
from predictor.evaluation.items import Item, degenerate_reason, make_mixtures, paired_items
from predictor.evaluation.options import EvaluateOptions
from predictor.evaluation.report import pick_examples, write_report
from predictor.evaluation.scoring import evaluate
from predictor.evaluation.systems import System, baseline_systems, model_systems, peer_systems, snmf_system
from tfrecord_schema import paths
from tfrecord_schema.config import SpectrogramConfig

if TYPE_CHECKING:
    from predictor.evaluation.snmf import SparseNMF

logger = logging.getLogger(__name__)


def run_evaluation(options: EvaluateOptions) -> dict[str, Any]:
    """Builds the items and systems of `options`, scores them and writes the report; returns the results.

    Items come from `noisy_dir` + `clean_dir` or from `voice_dir` + `noise_dir` (see `paired_items`,
    `make_mixtures`). `models` maps a system name to a model directory; all models must share one
    sample rate, which is the evaluation rate (else `sample_rate`, 8000 Hz by default). `systems`
    keeps only the systems of those names. Items shorter than one model window, or otherwise
    degenerate (`degenerate_reason`), are skipped and listed in the report; `duration` (seconds)
    must therefore be at least one window. With `save_audio`, the example items' clean, noisy and
    estimated signals are written as wav under output_dir/audio/ITEM/. The input folders and
    `output_dir` may be local or remote (gs://...).

    A sparse-NMF baseline (`predictor.evaluation.snmf.SparseNMF`, system "snmf", scored after the
    classical baselines and before the oracle) is added by one of: `snmf_speech_dir` +
    `snmf_noise_dir` (learn from the audio of two training folders), `snmf_dataset` (learn from the
    train split of a dataset directory) or `snmf_file` (an .npz saved earlier); `snmf_atoms` (per
    dictionary) and `snmf_sparsity` override the defaults when learning. Nothing is chosen
    automatically, and a training folder may not be, contain or lie inside an evaluation folder. The
    dictionaries used are written to output_dir/snmf.npz, so the run can be repeated with `snmf_file`.

    `peers` adds learned denoisers from `predictor.evaluation.peers` ("deepfilternet3", "rnnoise", or
    "all"; none by default), scored after the models: each runs at 48 kHz on the items resampled up,
    its output resampled back to the evaluation rate and aligned with the input. They need the
    optional extra: pip install 'speech-enhance[peers]'.
    """
    if not isinstance(options, EvaluateOptions):
        raise TypeError(f"options must be an EvaluateOptions. Received: options={options!r}")
    o = options
    _check_counts(o.num_examples, o.sample_rate)
    peers = o.peers
    if peers:
        from predictor.evaluation.peers import peer_names

        peers = peer_names(peers)  # an unknown name fails here, before any model or peer loads
    snmf_request = _check_snmf_arguments(o.snmf_speech_dir, o.snmf_noise_dir, o.snmf_dataset, o.snmf_file,
                                         o.snmf_atoms, o.snmf_sparsity, [o.noisy_dir, o.clean_dir, o.voice_dir,
                                                                         o.noise_dir])
    paired = _check_sources(o.noisy_dir, o.clean_dir, o.voice_dir, o.noise_dir)
    found, config = _model_systems(o.models or {}, o.sample_rate, batch_size=o.batch_size, overlap=o.overlap,
                                   reference_recipe=o.reference_recipe)
    if peers:  # the peers that `systems` leaves out are not loaded
        found += peer_systems([p for p in peers if not o.systems or p in o.systems], config.sample_rate)
    snmf_model = None
    if snmf_request and o.systems and "snmf" not in o.systems:
        logger.info("snmf arguments given but 'snmf' is not among systems=%s: not fitted", list(o.systems))
    elif snmf_request:
        snmf_model = _snmf_model(config, o.snmf_speech_dir, o.snmf_noise_dir, o.snmf_dataset, o.snmf_file,
                                 o.snmf_atoms, o.snmf_sparsity)
    all_systems = _compared_systems(config, found, snmf_model, o.systems)
    items, source = _items(o, paired, config)
    rate = config.sample_rate
    logger.info("evaluating %d systems on %d items (%.1f s of audio at %d Hz)", len(all_systems), len(items),
                sum(it.noisy.shape[0] for it in items) / rate, rate)
    examples = pick_examples([it for it in items if degenerate_reason(it, rate, config.window_samples) is None],
                             o.num_examples)
    results = evaluate(items, all_systems, rate, with_pesq=o.with_pesq, with_stoi=o.with_stoi,
                       keep_outputs=examples, min_samples=config.window_samples)
    extra = {"source": source, "spectrogram": config.to_dict()}
    if snmf_model is not None:
        extra["snmf"] = {"hyper_parameters": snmf_model.hyper_parameters(), "training": snmf_model.training}
    written = write_report(results, items, o.output_dir, config=config,
                           example_system=_example_system(all_systems, o.models or {}), num_examples=o.num_examples,
                           extra=extra)
    if snmf_model is not None:
        written["snmf"] = snmf_model.save(paths.join(o.output_dir, "snmf.npz"))
    if o.save_audio:
        written["audio"] = _save_audio(results["outputs"], items, o.output_dir, rate)
    results = {k: v for k, v in results.items() if k != "outputs"}
    results["paths"] = written
    return results


def _items(options: EvaluateOptions, paired: bool, config: SpectrogramConfig) -> tuple[list[Item], dict[str, Any]]:
    """The items of `options` at the evaluation's rate, and their source as the report records it."""
    o, rate = options, config.sample_rate
    if paired:
        items = paired_items(o.noisy_dir, o.clean_dir, sample_rate=rate, snr_bins=o.snrs)
        return items, {"kind": "pairs", "noisy_dir": o.noisy_dir, "clean_dir": o.clean_dir, "snr_bins": list(o.snrs)}
    _check_duration(o.duration, config)
    items = make_mixtures(o.voice_dir, o.noise_dir, snrs=o.snrs, num_mixtures=o.num_mixtures, duration=o.duration,
                          sample_rate=rate, seed=o.seed, balance=o.balance)
    return items, {"kind": "mixtures", "voice_dir": o.voice_dir, "noise_dir": o.noise_dir, "snrs": list(o.snrs),
                   "num_mixtures": o.num_mixtures, "duration": o.duration, "seed": o.seed, "balance": o.balance}


def _check_counts(num_examples: Any, sample_rate: Any) -> None:
    """ValueError unless `num_examples` is an integer >= 0 and `sample_rate` a positive integer or None."""
    if not isinstance(num_examples, int) or isinstance(num_examples, bool) or num_examples < 0:
        raise ValueError("num_examples must be an integer >= 0 (items shown in examples.png; 0: none). "
                         f"Received: num_examples={num_examples!r}")
    # 0 used to pass as "not given" (8000 Hz), silently: a rate is positive or left out.
    if sample_rate is not None and (not isinstance(sample_rate, int) or isinstance(sample_rate, bool)
                                    or sample_rate <= 0):
        raise ValueError("sample_rate must be a positive rate in Hz, or None (the models' rate; 8000 Hz without "
                         f"models). Received: sample_rate={sample_rate!r}")


def _check_sources(noisy_dir: str | None, clean_dir: str | None, voice_dir: str | None,
                   noise_dir: str | None) -> bool:
    """Whether the items are paired files (else mixtures); ValueError unless exactly one pair of folders is given."""
    paired = noisy_dir is not None or clean_dir is not None
    mixed = voice_dir is not None or noise_dir is not None
    if paired == mixed or (paired and not (noisy_dir and clean_dir)) or (mixed and not (voice_dir and noise_dir)):
        raise ValueError("Give either noisy_dir and clean_dir (paired files) or voice_dir and noise_dir "
                         f"(mixtures made here). Received: noisy_dir={noisy_dir!r}, clean_dir={clean_dir!r}, "
                         f"voice_dir={voice_dir!r}, noise_dir={noise_dir!r}")
    return paired


def _model_systems(models: Mapping[str, str], sample_rate: int | None, *, batch_size: int | None, overlap: float,
                   reference_recipe: bool) -> tuple[list[System], SpectrogramConfig]:
    """The systems of every model, and the evaluation's STFT: the models' (which must agree), else
    the default one at `sample_rate` (8000 Hz when None)."""
    found: list[System] = []
    config = None
    for name, directory in models.items():
        systems, model_config = model_systems(name, directory, batch_size=batch_size, overlap=overlap,
                                              reference_recipe=reference_recipe)
        if config is not None and model_config.sample_rate != config.sample_rate:
            raise ValueError(f"All models must share one sample rate. Received: {config.sample_rate} Hz and "
                             f"{model_config.sample_rate} Hz ({directory})")
        config = config or model_config
        found += systems
    if config is None:
        return found, SpectrogramConfig.for_sample_rate(sample_rate or 8000)
    if sample_rate and sample_rate != config.sample_rate:
        raise ValueError(f"sample_rate must be left out (None) or equal the models' rate, {config.sample_rate} Hz. "
                         f"Received: sample_rate={sample_rate}. Leave it out to evaluate at the models' rate.")
    return found, config


def _compared_systems(config: SpectrogramConfig, found: list[System], snmf_model: SparseNMF | None,
                      systems: Sequence[str] | None) -> list[System]:
    """Every system in the order of the tables (the noisy input, the models and peers of `found`, the
    classical baselines, the SNMF, the oracle), only those named in `systems` when it is given."""
    base = baseline_systems(config)
    if snmf_model is not None:
        oracle_at = next((i for i, s in enumerate(base) if s.name == "oracle"), len(base))
        base.insert(oracle_at, snmf_system(snmf_model))
    every = base[:1] + found + base[1:]
    if not systems:
        return every
    unknown = sorted(set(systems) - {s.name for s in every})
    if unknown:
        raise ValueError(f"systems must name systems of this evaluation; {unknown} are not among them. "
                         f"Received: systems={list(systems)}. Available: {[s.name for s in every]}")
    return [s for s in every if s.name in set(systems)]


def _check_duration(duration: float, config: SpectrogramConfig) -> None:
    """ValueError when mixtures of `duration` seconds would be shorter than one model window."""
    rate = config.sample_rate
    if duration * rate < config.window_samples:
        # Every mixture would be shorter than one model window, and every one would be skipped.
        window_seconds = config.window_samples / rate
        raise ValueError(
            f"duration must be at least one model window, {window_seconds:.3f} s at {rate} Hz: "
            "shorter items cannot be scored (the reference recipe returns silence for them and PESQ/STOI need "
            f"more audio). Received: duration={duration}. Use duration={math.ceil(window_seconds * 100) / 100:g} "
            "or more.")


def _example_system(systems: Sequence[System], models: Mapping[str, str]) -> str:
    """The system whose estimates examples.png shows: the first model, else the oracle, else the last."""
    model_names = [s.name for s in systems if s.name in models]
    if model_names:
        return model_names[0]
    return "oracle" if any(s.name == "oracle" for s in systems) else systems[-1].name


def _save_audio(outputs: Mapping[str, Mapping[str, Any]], items: Sequence[Item], output_dir: str, rate: int) -> str:
    """Writes the clean signal and every kept estimate of each example item as output_dir/audio/ITEM/NAME.wav
    (float wav at `rate` Hz); returns output_dir/audio."""
    by_id = {it.item_id: it for it in items}
    for item_id, estimates in outputs.items():
        folder = paths.join(output_dir, "audio", item_id)
        signals = {"clean": by_id[item_id].clean, **estimates}
        for name, signal in signals.items():
            audio_io.write_audio_atomic(paths.join(folder, f"{name}.wav"), signal[:, None], rate, "FLOAT")
    return paths.join(output_dir, "audio")


# SparseNMF's own argument names, as run_evaluation calls them (errors raised inside it are renamed).
_SNMF_ARGUMENTS = {"speech_dir": "snmf_speech_dir", "noise_dir": "snmf_noise_dir", "dataset_dir": "snmf_dataset",
                   "path": "snmf_file", "atoms": "snmf_atoms", "sparsity": "snmf_sparsity"}


def _snmf_names(text: str) -> str:
    """`text` with SparseNMF's argument names written as run_evaluation's: a name with "_" wherever
    it stands, a plain word only as `word=` or where it opens the message (as the CLI renames flags)."""
    def rename(match: re.Match) -> str:
        name, equals = match.group(1), match.group(2)
        if "_" not in name and not equals and match.start() > 0:
            return match.group(0)
        return _SNMF_ARGUMENTS[name] + equals

    names = "|".join(_SNMF_ARGUMENTS)
    return re.sub(rf"(?<![\w-])({names})(?![\w-])(=?)", rename, text)


def _check_snmf_arguments(speech_dir: str | None, noise_dir: str | None, dataset: str | None, file: str | None,
                          atoms: int | None, sparsity: float | None, evaluation_dirs: Sequence[str | None]) -> bool:
    """Whether an SNMF system was asked for; ValueError for contradictory or leaking arguments."""
    folders = speech_dir is not None or noise_dir is not None
    ways = [name for name, given in (("snmf_speech_dir + snmf_noise_dir", folders),
                                     ("snmf_dataset", dataset is not None), ("snmf_file", file is not None)) if given]
    received = (f"Received: snmf_speech_dir={speech_dir!r}, snmf_noise_dir={noise_dir!r}, "
                f"snmf_dataset={dataset!r}, snmf_file={file!r}")
    if len(ways) > 1:
        raise ValueError(f"Give one way to get the SNMF dictionaries, not {' and '.join(ways)}: snmf_speech_dir and "
                         f"snmf_noise_dir (training folders), snmf_dataset (a dataset directory) or snmf_file (an "
                         f".npz saved earlier). {received}")
    if folders and not (speech_dir and noise_dir):
        raise ValueError(f"snmf_speech_dir and snmf_noise_dir go together: give both training folders. {received}")
    if not ways:
        if atoms is not None or sparsity is not None:
            raise ValueError("snmf_atoms and snmf_sparsity need training data: give snmf_speech_dir and "
                             f"snmf_noise_dir, or snmf_dataset. Received: snmf_atoms={atoms!r}, "
                             f"snmf_sparsity={sparsity!r}")
        return False
    if file is not None and (atoms is not None or sparsity is not None):
        raise ValueError(f"snmf_file already fixes the atoms and the sparsity; leave snmf_atoms and snmf_sparsity "
                         f"out. Received: snmf_atoms={atoms!r}, snmf_sparsity={sparsity!r}, snmf_file={file!r}")
    # Learning from the held-out audio would score the SNMF on its own training data.
    for name, training in (("snmf_speech_dir", speech_dir), ("snmf_noise_dir", noise_dir)):
        for held_out in evaluation_dirs:
            if training and held_out and (paths.same_location(training, held_out)
                                          or paths.is_inside(training, held_out)
                                          or paths.is_inside(held_out, training)):
                raise ValueError(f"{name} must not be, contain or lie inside an evaluation folder ({held_out!r}): "
                                 f"the SNMF would learn from the held-out audio. Received: {name}={training!r}")
    return True


def _snmf_model(config: SpectrogramConfig, speech_dir: str | None, noise_dir: str | None, dataset: str | None,
                file: str | None, atoms: int | None, sparsity: float | None) -> SparseNMF:
    """The SparseNMF the arguments ask for (fitted or loaded), at the evaluation's STFT."""
    from predictor.evaluation.snmf import SparseNMF, same_stft

    options = {k: v for k, v in (("atoms", atoms), ("sparsity", sparsity)) if v is not None}
    try:
        if file is not None:
            model = SparseNMF.load(file)
            if not same_stft(model.config, config):
                learnt, wanted = model.config, config
                raise ValueError(f"snmf_file was learnt at {learnt.sample_rate} Hz, n_fft {learnt.n_fft}, hop "
                                 f"{learnt.hop_length}; this evaluation runs at {wanted.sample_rate} Hz, n_fft "
                                 f"{wanted.n_fft}, hop {wanted.hop_length}: fit it again at this rate. "
                                 f"Received: snmf_file={file!r}")
        elif dataset is not None:
            model = SparseNMF.from_dataset(dataset, "train", config=config, **options)
        else:
            model = SparseNMF.from_folders(speech_dir, noise_dir, config, **options)
    except (ValueError, FileNotFoundError) as err:
        raise type(err)(_snmf_names(str(err))) from err
    return model
