"""`EvaluateOptions`: every option of an evaluation, declared once (default, help, flag).

`run_evaluation` takes it; `speech-enhance evaluate` builds its flags from it and writes the
library's argument names as those flags in errors (`tfrecord_schema.options`). This module imports
nothing heavy, so `speech-enhance --help` stays fast.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from predictor.predict_options import ACCELERATOR_BATCH_SIZE, CPU_BATCH_SIZE, DEFAULT_OVERLAP
from tfrecord_schema.options import option

DEFAULT_SNRS = (-5.0, 0.0, 5.0, 10.0, 15.0)  # dB
# The sparse-NMF baseline's size and sparsity (`predictor.evaluation.snmf.SparseNMF`'s defaults).
DEFAULT_ATOMS = 128
DEFAULT_SPARSITY = 1.0
SNMF_GROUP = "snmf"


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvaluateOptions:
    """What to score, on which items, and where the report goes (see `run_evaluation`)."""

    models: Mapping[str, str] | None = option(
        None, "system name -> model directory (local, gs:// or a shipped model's name); all models share one "
        "sample rate", cli=False)
    noisy_dir: str | None = option(None, "noisy files, paired with clean_dir by relative path; classes as for "
                                   "noise_dir", metavar="DIR")
    clean_dir: str | None = option(None, "clean files at the same relative paths as noisy_dir", metavar="DIR")
    voice_dir: str | None = option(None, "held-out clean speech to make mixtures from", metavar="DIR")
    noise_dir: str | None = option(
        None, "held-out noise to make mixtures from; classes from the nearest classes.tsv (file<TAB>class) or ESC-50 "
        "meta/esc50.csv in a file's folder or above (as the dataset job reads them), else sub-folder names",
        metavar="DIR")
    snrs: tuple[float, ...] = option(
        DEFAULT_SNRS, "input SNRs (dB) to mix at, or bin centres for paired files", nargs="+", parse=float,
        metavar="DB", default_text=" ".join(f"{snr:g}" for snr in DEFAULT_SNRS))
    num_mixtures: int = option(20, "mixtures per SNR")
    duration: float = option(
        4.0, "longest mixture, at least one model window (about 1 s); shorter voice files give shorter "
        "mixtures, and those shorter than a window are skipped", metavar="SECONDS")
    seed: int = option(0, "seed of the mixtures")
    balance: bool = option(False, "draw each mixture's speech corpus and noise group (the top folders of "
                           "voice_dir and noise_dir) first, each as likely as another, then a file in it; "
                           "without it files are drawn alike, so large folders dominate")
    sample_rate: int | None = option(
        None, "evaluation rate when no model is given; with models, their rate", default_text="8000")
    systems: tuple[str, ...] | None = option(
        None, "score only these systems (names as in the tables)", nargs="+", metavar="NAME")
    reference_recipe: bool = option(True, "also run each model the way the reference project did")
    with_pesq: bool = option(True, "compute PESQ", flag="--pesq")
    with_stoi: bool = option(True, "compute STOI", flag="--stoi")
    batch_size: int | None = option(
        None, "model windows per batch; windows of several files share a batch",
        default_text=f"{CPU_BATCH_SIZE} on a CPU, {ACCELERATOR_BATCH_SIZE} on a GPU or TPU")
    overlap: float = option(
        DEFAULT_OVERLAP, "fraction of a window shared with the next, in [0, 1); windows are joined by weighted overlap-add")
    num_examples: int = option(3, "items shown in examples.png", flag="--examples", metavar="N")
    save_audio: bool = option(
        False, "also write the example items' clean, noisy and enhanced audio under OUTPUT/audio/")
    snmf_speech_dir: str | None = option(
        None, "clean training speech (local or gs://, searched recursively) to learn the speech dictionary from; "
        "with snmf_noise_dir", metavar="DIR", group=SNMF_GROUP)
    snmf_noise_dir: str | None = option(
        None, "training noise to learn the noise dictionary from; with snmf_speech_dir", metavar="DIR",
        group=SNMF_GROUP)
    snmf_dataset: str | None = option(
        None, "a dataset directory written by `speech-enhance dataset`: learn from the clean and the noise "
        "(noisy - clean) spectrograms of its train split, read without TensorFlow", metavar="DIR", group=SNMF_GROUP)
    snmf_file: str | None = option(
        None, "an snmf.npz written by an earlier evaluation (or SparseNMF.save): use its dictionaries instead of "
        "learning", flag="--snmf-model", metavar="FILE", group=SNMF_GROUP)
    snmf_atoms: int | None = option(
        None, "atoms per dictionary, speech and noise alike, when learning", metavar="N", group=SNMF_GROUP,
        default_text=str(DEFAULT_ATOMS))
    snmf_sparsity: float | None = option(
        None, "L1 weight on the activations, for learning and enhancing, on spectrograms normalised to mean 1 "
        "(0: plain NMF)", metavar="X", group=SNMF_GROUP, default_text=str(DEFAULT_SPARSITY))
    peers: tuple[str, ...] = option(
        (), "also score learned denoisers a user could pick instead: deepfilternet3 (DeepFilterNet3), rnnoise "
        "(RNNoise), gtcrn (GTCRN), ul-unas (UL-UNAS), dtln (DTLN), nsnet2 (NSNet2), or all. Each runs at its "
        "own rate (DeepFilterNet3 and RNNoise 48 kHz, the others 16 kHz) on the items resampled, with a fresh state "
        "per item and its delay compensated. Needs: pip install 'speech-enhance[peers]'", nargs="+", metavar="NAME",
        default_text="")
    output_dir: str = option(
        help="folder (or gs:// prefix) for the report; each file is written whole under a temporary name and "
        "renamed into place", flag="--output", metavar="DIR")
