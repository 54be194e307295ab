"""The training configuration: the one place where training options, their defaults and choices live.

    config = TrainConfig(epochs=4, batch_size=16)
    config = TrainConfig.from_preset("gpu", epochs=10)

`trainer.train.train` takes a `TrainConfig`; `speech-enhance train` builds its flags (defaults,
choices, help) from the fields below, and `run.json` / model.json's "training" block are
`TrainConfig.to_dict()`. This module imports neither Keras nor TensorFlow, so `--help` stays fast.

Each field is a `tfrecord_schema.options.option` (help, choices, CLI flag group, "cli": False for the
few options without a flag) that also records whether a resumed run must use the same value
("resume": it changes what the backup holds).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from tfrecord_schema.config import from_known_keys
from tfrecord_schema.options import option
from trainer.targets import COMPLEX_TARGETS, LOSS_WEIGHTINGS, TARGETS

# The U-Net's losses: "huber" on the target of every bin, or one on the waveform
# (trainer/waveform_loss.py, whose WAVEFORM_LOSSES these are; a test checks they match).
LOSSES = ("huber", "snr", "si-sdr", "si-sdr+huber")
_MASK_TARGETS = ("mask", "psa", *COMPLEX_TARGETS)

LR_SCHEDULES = ("cosine", "plateau", "constant")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
DISTRIBUTIONS = ("mirrored", "tpu", "jax-data-parallel")
# The model families (trainer/families.py) and the TrainConfig fields that are each one's arguments.
_BLSTM_ARGS = ("blstm_layers", "blstm_units", "embedding_dim", "embedding_weight", "kmeans_iterations")
ARCHITECTURE_ARGS = {
    "unet": ("base_filters", "depth", "dropout", "negative_slope"),
    "blstm-sce": _BLSTM_ARGS,
    "blstm-dc": _BLSTM_ARGS,
    "mel-autoencoder": ("mel_bands",),
    "stream-crn": ("stream_size",),
}
ARCHITECTURES = tuple(ARCHITECTURE_ARGS)
# The model's STFT options: a source store's model only (a spectrogram dataset fixes its STFT).
STFT_OPTIONS = ("sample_rate", "window_samples", "n_fft", "hop_length")


def _option(default: Any, help: str, *, group: str, choices: tuple | None = None, resume: bool = False,
            cli: bool = True) -> Any:
    return option(default, help, group=group, choices=choices, resume=resume, cli=cli)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run (see each field's help; `docs/training.md`)."""

    # data and outputs
    target: str = _option("noise", "U-Net: what the model predicts: the noise in dB ('noise'), a magnitude "
                          "mask ('mask'), a phase-sensitive mask ('psa', the gain that best matches the clean "
                          "complex spectrum with the noisy phase) or a complex mask ('cmask': a gain and a turn "
                          "of the noisy phase; needs a waveform --loss); see trainer/targets.py. The other families "
                          "always predict a mask",
                          group="data", choices=TARGETS, resume=True)
    train_split: str = _option("train", "split to train on", group="data", cli=False)
    validation_split: str | None = _option(
        "valid", "split for validation, the best checkpoint and early stopping; None (or a missing split) "
        "monitors the training loss instead", group="data", cli=False)
    resume: bool = _option(True, "continue an interrupted run from its backup in the work dir, or "
                           "start over", group="data")
    overwrite: bool = _option(False, "replace a finished model already in the model dir; without it such a run "
                              "is refused (an interrupted run still resumes)", group="data")
    tensorboard: bool | None = _option(None, "write TensorBoard logs; None: when the tensorboard package "
                                       "is installed", group="data", cli=False)
    mixing_processes: int | None = _option(
        None, "source stores: worker processes that mix the training batches; default: one per usable core but "
        "one on hosts of 3 or more cores, else none; 0: mix on threads of the training process", group="data")
    backup_steps: int = _option(200, "source stores: back up the weights, the optimizer and the step every this "
                                "many steps (and after every epoch); a rerun resumes at that exact step",
                                group="data")
    # optimisation
    epochs: int = _option(20, "epochs to train (an epoch is steps_per_epoch batches)", group="optimisation",
                          resume=True)
    batch_size: int = _option(32, "global batch size, split across replicas; at most the number of "
                              "training examples", group="optimisation", resume=True)
    learning_rate: float = _option(3e-4, "peak Adam learning rate; 1e-3 can saturate the U-Net's tanh "
                                   "(docs/training.md)", group="optimisation")
    lr_schedule: str = _option("cosine", "cosine: warm-up then cosine decay to 1% of the peak; plateau: "
                               "halve when the monitored loss stalls for 2 epochs; constant",
                               group="optimisation", choices=LR_SCHEDULES, resume=True)
    warmup_fraction: float = _option(0.05, "share of all steps spent warming up with the cosine schedule",
                                     group="optimisation")
    steps_per_epoch: int | None = _option(None, "batches per epoch (default: one pass over the training "
                                          "split)", group="optimisation", resume=True)
    validation_steps: int | None = _option(None, "validation batches per epoch, the same ones each epoch "
                                           "(default: the whole split)", group="optimisation")
    early_stopping_patience: int | None = _option(8, "stop after this many epochs without a better "
                                                  "monitored loss; 0 (or None) never stops",
                                                  group="optimisation")
    time_limit_minutes: float | None = _option(None, "stop at the end of the first epoch that ends this many "
                                               "minutes after training began; the best checkpoint is kept as "
                                               "usual (default: no limit)", group="optimisation")
    loss: str = _option("huber", "U-Net: 'huber' on the target of every bin, or a loss on the waveform made in the "
                        "graph from the predicted gain times the noisy spectrum by an inverse STFT: 'snr' "
                        "(keeps the level) or 'si-sdr' (scale-invariant), each per example in dB, capped at 30 "
                        "dB; 'si-sdr+huber' adds the magnitude-weighted Huber loss on the mask; the waveform "
                        "losses need the mask or psa target (trainer/waveform_loss.py)",
                        group="optimisation", choices=LOSSES, resume=True)
    huber_delta: float = _option(1.0, "delta of the Huber loss", group="optimisation")
    loss_weighting: str = _option("none", "weigh the loss per time-frequency bin: 'none' (all alike, the "
                                  "reference) or 'magnitude' (by the noisy magnitude, so loud bins count most)",
                                  group="optimisation", choices=LOSS_WEIGHTINGS)
    seed: int = _option(0, "seed of the weights, dropout and shuffling", group="optimisation")
    shuffle_buffer: int = _option(2048, "examples held in the shuffle buffer", group="optimisation")
    cycle_length: int | None = _option(None, "shards read in parallel (default: min(16, number of shards))",
                                       group="optimisation")
    deterministic: bool = _option(False, "reproducible input order (slower); for tests", group="optimisation",
                                  cli=False)
    # model
    architecture: str = _option("unet", "model family (docs/training.md): unet; blstm-sce and blstm-dc (BLSTM "
                                "embeddings with a mask-inference head, trained with the source-contrastive or "
                                "the deep-clustering loss); mel-autoencoder; stream-crn (streaming, 32 ms "
                                "latency)", group="model",
                                choices=ARCHITECTURES, resume=True)
    base_filters: int = _option(16, "U-Net: filters of the first level, doubled per level", group="model",
                                resume=True)
    depth: int = _option(5, "U-Net: levels; frames and bins must be multiples of 2**(depth-1)", group="model",
                         resume=True)
    dropout: float = _option(0.5, "U-Net: dropout rate after the two deepest levels", group="model", resume=True)
    negative_slope: float = _option(0.3, "U-Net: LeakyReLU slope for negative inputs", group="model",
                                    resume=True)
    blstm_layers: int = _option(4, "BLSTM: bidirectional LSTM layers", group="model", resume=True)
    blstm_units: int = _option(500, "BLSTM: units per direction of each layer", group="model", resume=True)
    embedding_dim: int = _option(20, "BLSTM: dimensions of the embedding of each time-frequency bin",
                                 group="model", resume=True)
    embedding_weight: float = _option(1.0, "BLSTM: weight of the embedding loss (SCE or DC) against the "
                                      "mask-inference loss", group="model", resume=True)
    kmeans_iterations: int = _option(10, "BLSTM: k-means iterations of the clustering head at inference",
                                     group="model")
    stream_size: str = _option("small", "stream-crn: 'small' (52 K parameters, one dual-path block) or 'large' (479 K, three)",
                               group="model", choices=("small", "large"), resume=True)
    # The model's STFT, for a source store (a spectrogram dataset fixes its own): None derives it from
    # the store's sample rate (`SpectrogramConfig.for_sample_rate`).
    sample_rate: int | None = _option(None, "source stores: the model's sample rate in Hz; it must be the store's "
                                      "(default: the store's)", group="model", resume=True)
    window_samples: int | None = _option(None, "source stores: samples per training window (default: 8064 at 8 "
                                         "kHz, scaled with the sample rate)", group="model", resume=True)
    n_fft: int | None = _option(None, "source stores: FFT length in samples (default: 255 at 8 kHz, 511 at 16 "
                                "kHz...)", group="model", resume=True)
    hop_length: int | None = _option(None, "source stores: samples between STFT frames (default: 63 at 8 kHz, "
                                     "scaled with the sample rate)", group="model", resume=True)
    mel_bands: int = _option(64, "mel autoencoder: mel bands (a multiple of 4); 64 suit 128 bins at 8 kHz "
                             "(at least 2 bins each)",
                             group="model", resume=True)
    # hardware
    precision: str = _option("float32", "float32, or mixed precision: mixed_bfloat16 (TPU, Ampere+ GPUs) or "
                             "mixed_float16 (older GPUs, loss-scaled); the exported model is float32",
                             group="hardware", choices=PRECISIONS, resume=True)
    distribution: str | None = _option(None, "None; mirrored: all local GPUs (TensorFlow); tpu: TPUStrategy "
                                       "(TensorFlow); jax-data-parallel: all local devices (JAX)",
                                       group="hardware", choices=DISTRIBUTIONS)
    tpu: str | None = _option(None, "with distribution 'tpu': TPU name or grpc:// address, or 'local' on a TPU "
                              "VM (default: auto-detect, e.g. on Colab)", group="hardware")
    steps_per_execution: int = _option(1, "batches per compiled call; raise on TPUs", group="hardware")
    jit_compile: bool | str = _option("auto", "compile the train step with XLA: True, False or 'auto' "
                                      "(Keras decides)", group="hardware")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            choices, value = f.metadata["choices"], getattr(self, f.name)
            if choices is None or (value is None and f.default is None):
                continue
            if value not in choices:
                either = "None or one of" if f.default is None else "one of"
                raise ValueError(f"{f.name} must be {either} {choices}. Received: {f.name}={value!r}")
        for name in ("epochs", "batch_size", "shuffle_buffer", "steps_per_execution", "steps_per_epoch",
                     "validation_steps", "cycle_length", "backup_steps", *STFT_OPTIONS):
            _check_positive_int(name, getattr(self, name), allow_none=_field(name).default is None)
        processes = self.mixing_processes
        if processes is not None and (not isinstance(processes, int) or isinstance(processes, bool) or processes < 0):
            raise ValueError(f"mixing_processes must be None or an integer >= 0 (0: mix on threads). "
                             f"Received: mixing_processes={processes!r}")
        lr = self.learning_rate
        if not _is_number(lr) or not 0 < lr < 1:
            raise ValueError(f"learning_rate must be a number in (0, 1). Received: learning_rate={lr!r}. "
                             "This U-Net trains well at 3e-4.")
        if not _is_number(self.warmup_fraction) or not 0 <= self.warmup_fraction < 1:
            raise ValueError("warmup_fraction must be in [0, 1) (0: no warm-up). "
                             f"Received: warmup_fraction={self.warmup_fraction!r}")
        if not _is_number(self.huber_delta) or self.huber_delta <= 0:
            raise ValueError(f"huber_delta must be a positive number. Received: huber_delta={self.huber_delta!r}")
        if self.loss != "huber":
            if self.architecture != "unet":
                raise ValueError(f"loss={self.loss!r} is the U-Net's; the other families have their own loss. "
                                 f"Received: architecture={self.architecture!r}. Leave loss='huber'.")
            if self.target not in _MASK_TARGETS:
                raise ValueError(f"loss={self.loss!r} trains the output as a gain on the noisy spectrum, so target "
                                 f"must be one of {_MASK_TARGETS}. Received: target={self.target!r}")
            if self.loss_weighting != "none":
                raise ValueError(f"loss={self.loss!r} sets its own weighting (per example, and per bin for the "
                                 "Huber part); loss_weighting must be 'none'. "
                                 f"Received: loss_weighting={self.loss_weighting!r}")
        elif self.target in COMPLEX_TARGETS:
            raise ValueError(f"target={self.target!r} (a complex mask) has no per-bin target for the Huber loss: "
                             "train it with loss='si-sdr', 'snr' or 'si-sdr+huber'.")
        patience = self.early_stopping_patience
        if patience is not None and (not isinstance(patience, int) or isinstance(patience, bool) or patience < 0):
            raise ValueError("early_stopping_patience must be an integer >= 0 (0 or None: never stop early). "
                             f"Received: early_stopping_patience={patience!r}")
        limit = self.time_limit_minutes
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0):
            raise ValueError("time_limit_minutes must be a number > 0 or None (no limit). "
                             f"Received: time_limit_minutes={limit!r}")
        if self.tpu is not None and self.distribution != "tpu":
            raise ValueError(f"tpu={self.tpu!r} is only used with distribution='tpu'. "
                             f"Received: distribution={self.distribution!r}. Set both, or neither.")
        if self.jit_compile not in (True, False, "auto"):
            raise ValueError(f"jit_compile must be True, False or 'auto'. Received: jit_compile={self.jit_compile!r}")
        for name in ("resume", "overwrite", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False. Received: {name}={getattr(self, name)!r}")
        if self.architecture == "unet":
            check_unet_args(self.base_filters, self.depth, self.dropout, self.negative_slope)
        for name in ("blstm_layers", "blstm_units", "embedding_dim", "kmeans_iterations", "mel_bands"):
            _check_positive_int(name, getattr(self, name))
        if self.mel_bands % 4:
            raise ValueError("mel_bands must be a multiple of 4 (the autoencoder pools twice by 2). "
                             f"Received: mel_bands={self.mel_bands}")
        if not _is_number(self.embedding_weight) or self.embedding_weight < 0:
            raise ValueError("embedding_weight must be a number >= 0. "
                             f"Received: embedding_weight={self.embedding_weight!r}")

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "TrainConfig":
        """The preset `name` (see `PRESETS`) for the architecture in `overrides` (default "unet"),
        with `overrides` on top."""
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {tuple(PRESETS)}. Received: preset={name!r}")
        architecture = overrides.get("architecture", PRESETS[name].architecture)
        family = ARCHITECTURE_PRESETS.get(architecture, {}).get(name, {})
        return dataclasses.replace(PRESETS[name], **{**family, **overrides})

    def stft_overrides(self) -> dict[str, int]:
        """The model STFT options given (`STFT_OPTIONS` not None), as `SpectrogramConfig` fields."""
        return {name: getattr(self, name) for name in STFT_OPTIONS if getattr(self, name) is not None}

    def model_args(self) -> dict[str, Any]:
        """The architecture and its arguments, as stored in model.json ("model" entry)."""
        return {"architecture": self.architecture,
                **{name: getattr(self, name) for name in ARCHITECTURE_ARGS[self.architecture]}}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        return from_known_keys(cls, values)


def _field(name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(TrainConfig) if f.name == name)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}. "
                         f"Received: {name}={value!r}")


def check_unet_args(base_filters: Any, depth: Any, dropout: Any, negative_slope: Any) -> None:
    """The U-Net's arguments on their own (`trainer.model.build_unet` also checks them against the shape)."""
    for name, value in (("base_filters", base_filters), ("depth", depth)):
        _check_positive_int(name, value)
    if depth < 2:
        raise ValueError(f"depth must be at least 2 (one pooling level). Received: depth={depth}")
    if not _is_number(dropout) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
    if not _is_number(negative_slope) or negative_slope < 0:
        raise ValueError(f"negative_slope must be a number >= 0. Received: negative_slope={negative_slope!r}")


# Options that change what the backup holds: a resumed run must use the same values.
RESUME_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["resume"])

# Machine presets: validated overrides of the defaults. The CLI applies explicit flags on top.
PRESETS: dict[str, TrainConfig] = {
    # The reference U-Net on `make dataset`'s demo corpus in a few minutes on a 2-core CPU: a quick
    # check that everything works end to end, not a good denoiser.
    "cpu-demo": TrainConfig(epochs=3, batch_size=16, steps_per_epoch=20, validation_steps=4, shuffle_buffer=512,
                            early_stopping_patience=0),
    # One modern GPU (A100/H100/L4): big batches in bfloat16, XLA, full passes over the data.
    "gpu": TrainConfig(epochs=40, batch_size=256, learning_rate=5e-4, precision="mixed_bfloat16",
                       shuffle_buffer=8192, jit_compile=True),
    # A TPU (Colab, TPU VM): global batch 1024 over the cores, several steps per host call.
    "tpu": TrainConfig(epochs=40, batch_size=1024, learning_rate=5e-4, precision="mixed_bfloat16",
                       shuffle_buffer=16384, distribution="tpu", steps_per_execution=32),
}


# What a preset changes further for a model family: the BLSTMs are 10x the U-Net's parameters and
# their LSTMs run in float32 whatever the policy (cuDNN has no bfloat16 LSTM on JAX), so the CPU demo
# uses a small one; the mel autoencoder is tiny and takes larger steps.
ARCHITECTURE_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "blstm-sce": {"cpu-demo": {"blstm_layers": 2, "blstm_units": 64, "batch_size": 8}},
    "blstm-dc": {"cpu-demo": {"blstm_layers": 2, "blstm_units": 64, "batch_size": 8}},
    "mel-autoencoder": {"cpu-demo": {"learning_rate": 1e-3}, "gpu": {"learning_rate": 1e-3},
                        "tpu": {"learning_rate": 1e-3}},
}


def preset_overrides(name: str, architecture: str = "unet") -> dict[str, Any]:
    """The options preset `name` sets differently from the defaults for `architecture`."""
    default = TrainConfig().to_dict()
    preset = TrainConfig.from_preset(name, architecture=architecture).to_dict()
    return {k: v for k, v in preset.items() if v != default[k] and k != "architecture"}
