"""How examples are mixed, checked when built: `MixOptions` (draws of voice, noise, level, loudness) and
`AugmentOptions` (reverberation, babble, speed, noise colour, several noises, clipping, telephone band,
gain, mixture tilt), whose fields declare their defaults, help and flags once
(`tfrecord_schema.options`). The dataset job and the on-the-fly mixer take the same objects.

Light on purpose: `speech-enhance dataset` builds its flags from these classes for every command's
`--help`, so this module imports the standard library and `tfrecord_schema`'s light modules only.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import TYPE_CHECKING, Any, Sequence

from tfrecord_schema.options import option

if TYPE_CHECKING:
    import numpy as np

# The SNRs a training example can mean anything at: at -60 dB the voice is a thousandth of the noise;
# at +100 dB the noise lies below 16-bit audio's quantisation (-96 dBFS). Wider values only overflow
# (1e300, inf) or give examples that are all noise or all voice.
SNR_LIMITS_DB = (-60.0, 100.0)
LEVEL_LIMITS = (10.0 ** (-SNR_LIMITS_DB[1] / 20.0), 10.0 ** (-SNR_LIMITS_DB[0] / 20.0))  # noise/voice RMS ratio
MAX_BABBLE_TALKERS = 16
MAX_NOISES = 8  # noises summed into one example's noise by the several-noises kind
RIR_SOURCES = ("simulated", "files", "both")
REVERB_TARGETS = ("early", "dry")
TELEPHONE_CODECS = ("none", "ulaw", "alaw", "both")
MIXING, AUGMENTATION = "mixing", "augmentation"
TELEPHONE_BAND_HZ = (300.0, 3400.0)
# The kinds applied to the blended mixture, and the several-noises kind, each switched on by its share.
MIXTURE_KIND_SHARES = ("several_noises_probability", "clip_probability", "telephone_probability",
                       "gain_probability", "mixture_tilt_probability")


def parse_range(text: str) -> tuple[float, float]:
    """"LOW:HIGH" (a flag's text) -> (LOW, HIGH)."""
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH, e.g. 0.2:0.8 or -5:15; received {text!r}") from None
    return lo, hi


def range_option(default: tuple[float, float], help: str, **kwargs: Any) -> Any:
    """An `option` holding a (LOW, HIGH) range, given on the command line as LOW:HIGH."""
    return option(default, help, parse=parse_range, metavar="LOW:HIGH",
                  default_text=kwargs.pop("default_text", f"{default[0]:g}:{default[1]:g}"), **kwargs)


def _check_range(name: str, unit: str, given: tuple[float, float], limits: tuple[float, float], example: str) -> None:
    """Refuses a LOW:HIGH range that is not finite, not ordered, or outside `limits` (inclusive)."""
    lo, hi = given
    low, high = limits
    if not (math.isfinite(lo) and math.isfinite(hi) and low <= lo <= hi <= high):
        raise ValueError(f"{name} takes LOW:HIGH{unit} with {low:g} <= LOW <= HIGH <= {high:g} (finite), "
                         f"e.g. {example}. Received: {name}={lo}:{hi}")


@dataclasses.dataclass(frozen=True)
class MixOptions:
    """How examples are drawn. Exactly one of `level_range` and `snr_range_db` is used."""

    seed: int = option(0, "global seed; with the same arguments, the same examples", group=MIXING, default_text="")
    level_range: tuple[float, float] | None = range_option(
        (0.2, 0.8), "noise-to-voice RMS ratio range, voice at its active speech level", cli=False)
    snr_range_db: tuple[float, float] | None = option(
        None, "draw an active-speech SNR in dB instead of a level, e.g. -5:15", cli=False, metavar="LOW:HIGH")
    loudness_range_dbfs: tuple[float, float] = range_option(
        (-35.0, -15.0), "mixture RMS range in dBFS; never clips", flag="--loudness-dbfs", group=MIXING)
    max_window_retries: int = option(20, cli=False)

    def __post_init__(self) -> None:
        if (self.level_range is None) == (self.snr_range_db is None):
            raise ValueError("MixOptions needs exactly one of level_range and snr_range_db")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            # numpy's SeedSequence takes non-negative integers only.
            raise ValueError(f"seed must be a non-negative integer, e.g. 0. Received: seed={self.seed!r}")
        if self.level_range is not None:
            _check_range("level_range", "", self.level_range, LEVEL_LIMITS, "0.2:0.8")
        if self.snr_range_db is not None:
            _check_range("snr_range_db", " in dB", self.snr_range_db, SNR_LIMITS_DB, "-5:15")
        lo, hi = self.loudness_range_dbfs
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi <= 0):
            raise ValueError(f"loudness_range_dbfs takes LOW:HIGH with LOW <= HIGH <= 0 (finite), e.g. -35:-15. "
                             f"Received: loudness_range_dbfs={lo}:{hi}")

    def draw_level(self, rng: np.random.Generator) -> float:
        if self.level_range is not None:
            return float(rng.uniform(*self.level_range))
        return float(10.0 ** (-rng.uniform(*self.snr_range_db) / 20.0))


def _pair(name: str, value: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} takes (LOW, HIGH). Received: {name}={value!r}") from None
    return lo, hi


def _probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability between 0 and 1. Received: {name}={value}")


# The recommended set (`--augment`, `RECOMMENDED`): a moderate share of every kind, most examples
# keep clean, dry recorded noise, so the model still learns the common case.
_RECOMMENDED = dict(reverb_probability=0.3, rt60_range=(0.1, 0.9), babble_probability=0.15, babble_talkers=(1, 6),
                    speed_probability=0.3, speed_range=(0.9, 1.1), noise_tilt_db=6.0, noise_lowpass_probability=0.2)


def _share(default: float, help: str, name: str) -> Any:
    """A per-example probability flag `name`, whose help names its value in the recommended set."""
    return option(default, help, metavar="P", group=AUGMENTATION,
                  default_text=f"{default:g}, or {_RECOMMENDED[name]:g} with --augment" if name in _RECOMMENDED
                  else f"{default:g}, also with --augment")


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
    """Which augmentations an example may get, and their ranges (all off by default).

    Probabilities are per example, in [0, 1]. Ranges are (LOW, HIGH), drawn uniformly.
    `rt60_range` in seconds; `early_reflections_ms` is how much of the room response after the direct
    path the clean target keeps; `room_count` rooms are simulated once per worker (about 0.035 s each).
    `babble_level_db`: each talker's level is drawn within +- this of the others' (dB).
    `noise_tilt_db` is the largest tilt (+- dB/octave); `noise_lowpass_hz` the cut-off range (Hz).
    `rir_source` picks simulated rooms or the split's recorded impulse responses (`SplitSources.rirs`);
    `reverb_target` keeps early reflections in the clean target or the direct path only.
    `several_noises_count` is the number of noises summed (whole numbers, 2 to MAX_NOISES).
    `clip_level_db` is in dB relative to the mixture's peak (below 0); `gain_range_db` in dB;
    `mixture_tilt_db` the largest tilt of the mixture (+- dB/octave); `telephone_codec` the 8-bit
    companding after the telephone band-pass ("both": mu-law or A-law, drawn per example).
    """

    reverb_probability: float = _share(
        0.0, "share of examples whose voice and noise are convolved with a simulated room's impulse responses "
             "(pyroomacoustics image-source method); the clean target keeps the direct path and early reflections",
        "reverb_probability")
    rt60_range: tuple[float, float] = range_option(
        (0.1, 0.9), "RT60 range of the simulated rooms in seconds", flag="--rt60", group=AUGMENTATION)
    early_reflections_ms: float = option(
        50.0, "reflections after the direct path kept in the clean target, in ms", metavar="MS", group=AUGMENTATION)
    room_count: int = option(100, "rooms simulated once per worker and drawn from per example, about 0.035 s each",
                             flag="--rooms", metavar="N", group=AUGMENTATION)
    babble_probability: float = _share(
        0.0, "share of examples whose noise is babble: excerpts of other speakers of the same split, noise class "
             "'babble'", "babble_probability")
    babble_talkers: tuple[int, int] = range_option(
        (1, 6), "number of babble talkers, whole numbers", group=AUGMENTATION)
    babble_level_db: float = option(
        3.0, "each babble talker's level is drawn within +- DB of the others", metavar="DB", group=AUGMENTATION)
    speed_probability: float = _share(
        0.0, "share of examples whose voice is resampled by a speed factor, changing tempo and pitch", "speed_probability")
    speed_range: tuple[float, float] = range_option(
        (0.9, 1.1), "speed factor range, >1 faster and higher", group=AUGMENTATION)
    noise_tilt_db: float = option(
        0.0, "tilt every noise's spectrum by a random slope within +-DB dB/octave around 1 kHz", metavar="DB",
        group=AUGMENTATION, default_text=f"0 = off, or {_RECOMMENDED['noise_tilt_db']:g} with --augment")
    noise_lowpass_probability: float = _share(
        0.0, "share of examples whose noise is low-passed at a random cut-off", "noise_lowpass_probability")
    noise_lowpass_hz: tuple[float, float] = range_option(
        (1000.0, 3500.0), "low-pass cut-off range in Hz, below half the sample rate", group=AUGMENTATION)
    rir_source: str = option(
        "simulated", "where reverberation's impulse responses come from: simulated rooms, the split's --rir-dir "
                     "files (simulated rooms while a split has none), or both (each drawn half of the time)",
        choices=RIR_SOURCES, group=AUGMENTATION)
    reverb_target: str = option(
        "early", "clean target of a reverberant voice: the direct path and early_reflections_ms of reflections "
                 "(early), or the direct path only (dry)", choices=REVERB_TARGETS, group=AUGMENTATION)
    several_noises_probability: float = _share(
        0.0, "share of examples whose noise is the sum of several recorded noise files of the split",
        "several_noises_probability")
    several_noises_count: tuple[int, int] = range_option(
        (2, 3), "number of noises summed, whole numbers", group=AUGMENTATION)
    several_noises_level_db: float = option(
        6.0, "each added noise's RMS is drawn within +- DB of the first noise's", metavar="DB", group=AUGMENTATION)
    clip_probability: float = _share(
        0.0, "share of examples whose mixture is clipped (the clean target is not)", "clip_probability")
    clip_level_db: tuple[float, float] = range_option(
        (-12.0, -1.0), "clip level range in dB relative to the mixture's peak, below 0", group=AUGMENTATION)
    telephone_probability: float = _share(
        0.0, "share of examples whose mixture is band-limited to the telephone band, 300-3400 Hz",
        "telephone_probability")
    telephone_codec: str = option(
        "none", "8-bit companding of a telephone-band mixture: mu-law, A-law, or either (both)",
        choices=TELEPHONE_CODECS, group=AUGMENTATION)
    gain_probability: float = _share(
        0.0, "share of examples whose mixture and clean target are scaled together by a random gain",
        "gain_probability")
    gain_range_db: tuple[float, float] = range_option(
        (-10.0, 10.0), "gain range in dB; the mixture's peak stays limited", group=AUGMENTATION)
    mixture_tilt_probability: float = _share(
        0.0, "share of examples whose mixture spectrum is tilted (the clean target is not)",
        "mixture_tilt_probability")
    mixture_tilt_db: float = option(
        6.0, "largest mixture tilt, +- DB dB/octave around 1 kHz", metavar="DB", group=AUGMENTATION)

    def __post_init__(self) -> None:
        for name in ("reverb_probability", "babble_probability", "speed_probability", "noise_lowpass_probability",
                     *MIXTURE_KIND_SHARES):
            _probability(name, getattr(self, name))
        lo, hi = _pair("rt60_range", self.rt60_range)
        if not 0.05 <= lo <= hi <= 2.0:
            raise ValueError(f"rt60_range takes seconds LOW:HIGH with 0.05 <= LOW <= HIGH <= 2, e.g. 0.1:0.9. "
                             f"Received: rt60_range={lo}:{hi}")
        object.__setattr__(self, "rt60_range", (lo, hi))
        if not 0 <= self.early_reflections_ms <= 200:
            raise ValueError(f"early_reflections_ms must be within 0-200 ms (50 is usual). "
                             f"Received: early_reflections_ms={self.early_reflections_ms}")
        if not 1 <= self.room_count <= 10_000:
            raise ValueError(f"room_count must be 1 to 10000. Received: room_count={self.room_count}")
        lo, hi = _pair("babble_talkers", self.babble_talkers)
        if lo != int(lo) or hi != int(hi) or not 1 <= lo <= hi <= MAX_BABBLE_TALKERS:
            raise ValueError(f"babble_talkers takes whole numbers LOW:HIGH with 1 <= LOW <= HIGH <= "
                             f"{MAX_BABBLE_TALKERS}, e.g. 1:6. Received: babble_talkers={lo:g}:{hi:g}")
        object.__setattr__(self, "babble_talkers", (int(lo), int(hi)))
        if not 0 <= self.babble_level_db <= 20:
            raise ValueError(f"babble_level_db must be within 0-20 dB. Received: babble_level_db={self.babble_level_db}")
        lo, hi = _pair("speed_range", self.speed_range)
        if not 0.5 <= lo <= hi <= 2.0:
            raise ValueError(f"speed_range takes factors LOW:HIGH with 0.5 <= LOW <= HIGH <= 2, e.g. 0.9:1.1. "
                             f"Received: speed_range={lo}:{hi}")
        object.__setattr__(self, "speed_range", (lo, hi))
        if not 0 <= self.noise_tilt_db <= 12:
            raise ValueError(f"noise_tilt_db is the largest tilt in dB/octave, 0 to 12 (0 = off). "
                             f"Received: noise_tilt_db={self.noise_tilt_db}")
        lo, hi = _pair("noise_lowpass_hz", self.noise_lowpass_hz)
        if not 100 <= lo <= hi:
            raise ValueError(f"noise_lowpass_hz takes Hz LOW:HIGH with 100 <= LOW <= HIGH, e.g. 1000:3500. "
                             f"Received: noise_lowpass_hz={lo}:{hi}")
        object.__setattr__(self, "noise_lowpass_hz", (lo, hi))
        self._check_mixture_kinds()

    def _check_mixture_kinds(self) -> None:
        for name, value, choices in (("rir_source", self.rir_source, RIR_SOURCES),
                                     ("reverb_target", self.reverb_target, REVERB_TARGETS),
                                     ("telephone_codec", self.telephone_codec, TELEPHONE_CODECS)):
            if value not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}. Received: {name}={value!r}")
        lo, hi = _pair("several_noises_count", self.several_noises_count)
        if lo != int(lo) or hi != int(hi) or not 2 <= lo <= hi <= MAX_NOISES:
            raise ValueError(f"several_noises_count takes whole numbers LOW:HIGH with 2 <= LOW <= HIGH <= "
                             f"{MAX_NOISES}, e.g. 2:3. Received: several_noises_count={lo:g}:{hi:g}")
        object.__setattr__(self, "several_noises_count", (int(lo), int(hi)))
        if not 0 <= self.several_noises_level_db <= 20:
            raise ValueError(f"several_noises_level_db must be within 0-20 dB. "
                             f"Received: several_noises_level_db={self.several_noises_level_db}")
        lo, hi = _pair("clip_level_db", self.clip_level_db)
        if not -40 <= lo <= hi < 0:
            raise ValueError(f"clip_level_db takes dB below the peak LOW:HIGH with -40 <= LOW <= HIGH < 0, e.g. "
                             f"-12:-1. Received: clip_level_db={lo:g}:{hi:g}")
        object.__setattr__(self, "clip_level_db", (lo, hi))
        lo, hi = _pair("gain_range_db", self.gain_range_db)
        if not -40 <= lo <= hi <= 40:
            raise ValueError(f"gain_range_db takes dB LOW:HIGH with -40 <= LOW <= HIGH <= 40, e.g. -10:10. "
                             f"Received: gain_range_db={lo:g}:{hi:g}")
        object.__setattr__(self, "gain_range_db", (lo, hi))
        if not 0 < self.mixture_tilt_db <= 12:
            raise ValueError(f"mixture_tilt_db is the largest tilt in dB/octave, above 0 and at most 12. "
                             f"Received: mixture_tilt_db={self.mixture_tilt_db}")

    @property
    def enabled(self) -> bool:
        return bool(self.reverb_probability or self.babble_probability or self.speed_probability
                    or self.noise_tilt_db or self.noise_lowpass_probability
                    or any(getattr(self, name) for name in MIXTURE_KIND_SHARES))

    def check_sample_rate(self, sample_rate: int) -> None:
        """Refuses a low-pass cut-off range that reaches the Nyquist frequency of `sample_rate` (Hz)."""
        if self.noise_lowpass_probability and self.noise_lowpass_hz[1] >= sample_rate / 2:
            raise ValueError(f"noise_lowpass_hz must stay below the Nyquist frequency ({sample_rate / 2:g} Hz at "
                             f"{sample_rate} Hz). Received: noise_lowpass_hz={self.noise_lowpass_hz[0]:g}:"
                             f"{self.noise_lowpass_hz[1]:g}")
        if self.telephone_probability and sample_rate <= 2 * TELEPHONE_BAND_HZ[1]:
            raise ValueError(f"telephone_probability needs a sample rate above {2 * TELEPHONE_BAND_HZ[1]:g} Hz (the "
                             f"telephone band reaches {TELEPHONE_BAND_HZ[1]:g} Hz). Received: sample rate "
                             f"{sample_rate} Hz, telephone_probability={self.telephone_probability}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


RECOMMENDED = AugmentOptions(**_RECOMMENDED)


# The flags of the level draw, written by hand: one of two fields, and both None means the default.
LEVEL_FLAGS = {"level_range": "--noise-level", "snr_range_db": "--snr-db"}


def add_mixing_flags(parser: argparse.ArgumentParser, names: dict[str, str] | None = None) -> None:
    """Adds the mixing flags but --seed (--noise-level or --snr-db, --loudness-dbfs) and the augmentation
    flags (--augment for `RECOMMENDED`, then one per `AugmentOptions` field) to `parser`, in argument
    groups "mixing" and "augmentation"; `mixing_from_args` reads them back. `names`: library names ->
    flags for the help texts."""
    from tfrecord_schema import options

    groups = {MIXING: parser.add_argument_group("mixing"), AUGMENTATION: parser.add_argument_group(
        "augmentation", "All off by default. --augment turns on the recommended set (docs/dataset.md, Augmentation); "
        "each flag below overrides its part of it.")}
    terms = {**options.flag_names(MixOptions, AugmentOptions), **LEVEL_FLAGS, **(names or {})}
    levels = groups[MIXING].add_mutually_exclusive_group()
    for name, flag in LEVEL_FLAGS.items():
        field = MixOptions.__dataclass_fields__[name]
        default = field.default and f" (default: {field.default[0]:g}:{field.default[1]:g})"
        levels.add_argument(flag, dest=name, type=parse_range, metavar="LOW:HIGH",
                            help=options.flag_terms(field.metadata["help"], terms) + (default or ""))
    options.add_flags(parser, MixOptions, groups=groups, names=terms, only=("loudness_range_dbfs",))
    groups[AUGMENTATION].add_argument("--augment", action="store_true", help="the recommended set: " + ", ".join(
        f"{k}={v}" for k, v in RECOMMENDED.to_dict().items() if v != getattr(AugmentOptions(), k)))
    options.add_flags(parser, AugmentOptions, groups=groups, names=terms)


def mixing_from_args(args: argparse.Namespace, seed: int = 0) -> tuple[MixOptions | None, AugmentOptions | None]:
    """(MixOptions with `seed`, AugmentOptions) from the flags `add_mixing_flags` added; each None when
    none of its flags was given."""
    from tfrecord_schema import options

    levels = {"level_range": None, "snr_range_db": args.snr_range_db} if args.snr_range_db is not None else \
        {"level_range": args.level_range} if args.level_range is not None else {}
    mixing = {**options.given(MixOptions, args), **levels}
    mixing.pop("seed", None)
    mix = MixOptions(**{**mixing, "seed": seed}) if mixing else None
    augmenting = args.augment or options.given(AugmentOptions, args)
    augment = options.from_args(AugmentOptions, args, base=RECOMMENDED if args.augment else AugmentOptions()) \
        if augmenting else None
    return mix, augment
