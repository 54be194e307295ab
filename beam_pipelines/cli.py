"""`speech-enhance dataset` and `speech-enhance inspect` (argument parsing only; work is in the library)."""

from __future__ import annotations

import argparse
import math

from beam_pipelines.options import EXECUTION, INPUTS, OUTPUT, SOURCES, SOURCES_DEFAULT_RATE, DatasetOptions
from mixing.options import AUGMENTATION, MIXING, RECOMMENDED, AugmentOptions, MixOptions, parse_range
from tfrecord_schema import options
from tfrecord_schema.config import DTYPES, SpectrogramConfig

DATASET_HELP = """Blend voices with noise and write magnitude/phase spectrogram TFRecord shards, or with
--kind sources store every usable voice, noise and room impulse response file as a 16-bit waveform
segment (a source store), which `train` mixes into examples on the fly.

Apache Beam's own options are passed to Beam, e.g. for Dataflow:
  --runner DataflowRunner --project P --region R --temp_location gs://B/tmp --setup_file ./setup.py
Any other unknown option is an error. Locally the job runs on Beam's FnApiRunner with one process
per core (--workers). On a Dask cluster (pip install 'speech-enhance[dask]'):
  --runner DaskRunner --dask_client_address tcp://HOST:PORT
or --runner DaskRunner alone for a local one with --workers processes.

The dataset is built in OUTPUT.incomplete beside OUTPUT and moved into place when finished: a failed
build leaves an existing dataset as it was. OUTPUT must be new, empty, or a dataset (--overwrite)."""

# Library argument names -> the flags a user typed, for error messages (e.g. "Received: --seed -1").
FLAGS = options.flag_names(DatasetOptions, MixOptions, AugmentOptions, extra={
    "voice_dir": "--voice-dir", "noise_dir": "--noise-dir", "rir_dir": "--rir-dir", "level_range": "--noise-level",
    "snr_range_db": "--snr-db", "max_shard_bytes": "--shard-size-mb (in bytes)", "overwrite": "--overwrite",
    "assume_yes": "--yes", "break_lock": "--break-lock"})
COMPRESSION = {"none": "", "gzip": "GZIP"}  # --compression -> DatasetOptions.compression


def _shard_size(text: str) -> float:
    """One number in MiB; the old MIN:MAX form is accepted and its MIN ignored (it was never used)."""
    try:
        value = float(text.split(":")[-1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in MiB, e.g. 200; received {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive size in MiB; received {text!r}")
    return value


def refuse_unknown_beam_args(extra: list[str], command: str) -> None:
    """Raises ValueError naming the options in `extra` that neither `speech-enhance COMMAND` nor any
    Beam options class defines (`unknown_beam_args`)."""
    unknown = unknown_beam_args(extra)
    if unknown:
        flags = [a for a in unknown if a.startswith("-")] or unknown
        raise ValueError(f"unknown option(s) {' '.join(flags)}: neither `speech-enhance {command}` nor Apache Beam "
                         f"defines them (see `speech-enhance {command} --help`).")


def unknown_beam_args(args: list[str]) -> list[str]:
    """The options in `args` that no Beam options class defines (Beam itself only warns about them).

    Beam's own check (`PipelineOptions.get_all_options`) parses with every registered options class;
    this does the same, with the runners' option classes that are installed imported first.
    """
    import importlib

    from apache_beam.options import pipeline_options as po

    for module in ("apache_beam.runners.dask.dask_runner", "apache_beam.runners.portability.flink_runner",
                   "apache_beam.runners.portability.spark_runner"):
        try:
            importlib.import_module(module)
        except ImportError:  # that runner's extra dependencies are not installed
            pass
    parser = po._BeamArgumentParser(allow_abbrev=False)  # the parser Beam itself uses for its options
    classes = {}
    for cls in po.PipelineOptions.__subclasses__():
        classes.setdefault(str(cls), cls)
    for cls in classes.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(list(args))
    return unknown


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, e.g. 4; received {text!r}")
    return value


def _default(cls: type, name: str):
    return cls.__dataclass_fields__[name].default


def _help(cls: type, name: str, default: object = None) -> str:
    """The help of a field whose flag is written by hand, ending with `default` as the flag spells it."""
    text = options.flag_terms(cls.__dataclass_fields__[name].metadata["help"], FLAGS)
    return text if default is None else f"{text} (default: {default})"


def _level_default() -> str:
    lo, hi = _default(MixOptions, "level_range")
    return f"{lo:g}:{hi:g}, about {-20 * math.log10(lo):.0f} to {-20 * math.log10(hi):.0f} dB SNR"


def _recommended_set_help() -> str:
    r = RECOMMENDED
    return (f"the recommended set: reverb {r.reverb_probability:g} (RT60 {r.rt60_range[0]:g}:{r.rt60_range[1]:g}), "
            f"babble {r.babble_probability:g} ({r.babble_talkers[0]}:{r.babble_talkers[1]} talkers), speed "
            f"{r.speed_probability:g} ({r.speed_range[0]:g}:{r.speed_range[1]:g}), noise tilt +-{r.noise_tilt_db:g} "
            f"dB/octave, noise low-pass {r.noise_lowpass_probability:g} ({r.noise_lowpass_hz[0]:g}:"
            f"{r.noise_lowpass_hz[1]:g} Hz)")


def register(subparsers) -> None:
    p = subparsers.add_parser("dataset", help="build a spectrogram dataset (Apache Beam job)", description=DATASET_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = {INPUTS: p.add_argument_group("inputs"), OUTPUT: p.add_argument_group("output"),
              MIXING: p.add_argument_group("mixing")}
    src = groups[INPUTS]
    src.add_argument("--voice-dir", action="append", metavar="DIR",
                     help="folder (local or gs://) searched recursively for wav/flac/ogg speech; give it again for "
                          "more corpora (files are then named FOLDER/..., speakers FOLDER:id, FOLDER being each "
                          "folder's name)")
    src.add_argument("--noise-dir", action="append", metavar="DIR",
                     help="folder (local or gs://) searched recursively for wav/flac/ogg noise; may be given more "
                          "than once, like --voice-dir")
    src.add_argument("--rir-dir", action="append", metavar="DIR",
                     help="folder (local or gs://) of recorded room impulse responses (wav/flac/ogg), split by "
                          "file like the noises, for --rir-source files or both (a source store keeps them for "
                          "training); may be given more than once, or not at all")
    src.add_argument("--demo", action="store_true",
                     help="generate the built-in demo corpus (under OUTPUT/../demo_corpus) and use it as input")
    options.add_flags(p, DatasetOptions, groups=groups, names=FLAGS, only=("noise_classes_file",))
    options.add_flags(p, DatasetOptions, groups=groups, names=FLAGS, only=("splits_file",))
    fractions = ",".join(map(str, _default(DatasetOptions, "split_fractions")))
    src.add_argument("--split-fractions", default=fractions, help=_help(DatasetOptions, "split_fractions", fractions))
    options.add_flags(p, DatasetOptions, groups=groups, names=FLAGS, only=("output", "kind", "num_examples"))
    out = groups[OUTPUT]
    shard_mb = _default(DatasetOptions, "max_shard_bytes") / 2**20
    out.add_argument("--shard-size-mb", type=_shard_size, default=shard_mb, metavar="MAX",
                     help=_help(DatasetOptions, "max_shard_bytes", f"{shard_mb:g}"))
    compression = {v: k for k, v in COMPRESSION.items()}[_default(DatasetOptions, "compression")]
    out.add_argument("--compression", choices=list(COMPRESSION), default=compression,
                     help=_help(DatasetOptions, "compression"))
    out.add_argument("--dtype", choices=DTYPES, default=None,
                     help=f"spectrogram storage dtype (default: {SpectrogramConfig.dtype})")
    out.add_argument("--sample-rate", type=int, default=None,
                     help="model sample rate in Hz; STFT geometry is derived for multiples of 8000 (default: "
                          f"{SpectrogramConfig.sample_rate}). --kind sources: the store's rate, 8000, 16000, 24000, "
                          f"32000 or 48000 (default: {SOURCES_DEFAULT_RATE})")
    options.add_flags(p, DatasetOptions, groups=groups, names=FLAGS, only=("write_audio",))
    out.add_argument("--overwrite", action="store_true", help=_help(DatasetOptions, "overwrite"))
    out.add_argument("--yes", action="store_true",
                     help="build even if the estimated size exceeds the free space of a local --output")
    out.add_argument("--break-lock", action="store_true",
                     help="take over OUTPUT.incomplete.lock, which a build holds while it runs; only for a build "
                          "that is gone (its machine crashed). A lock of a process of this host that no longer "
                          "runs is taken over without it")
    options.add_flags(p, MixOptions, groups=groups, names=FLAGS, only=("seed",))
    levels = groups[MIXING].add_mutually_exclusive_group()
    levels.add_argument("--noise-level", type=parse_range, metavar="LOW:HIGH",
                        help=_help(MixOptions, "level_range", _level_default()))
    levels.add_argument("--snr-db", type=parse_range, metavar="LOW:HIGH", help=_help(MixOptions, "snr_range_db"))
    options.add_flags(p, MixOptions, groups=groups, names=FLAGS, only=("loudness_range_dbfs",))
    groups[AUGMENTATION] = p.add_argument_group(
        "augmentation",
        "All off by default. --augment turns on the recommended set (docs/dataset.md, Augmentation); each flag "
        "below overrides its part of it. Every draw is deterministic from --seed and the example.")
    groups[AUGMENTATION].add_argument(
        "--augment", action="store_true", help=_recommended_set_help())
    options.add_flags(p, AugmentOptions, groups=groups, names=FLAGS)
    groups[EXECUTION] = p.add_argument_group("execution")
    groups[EXECUTION].add_argument(
        "--workers", type=_positive_int, default=None, help="local worker processes: FnApiRunner's, or those of the "
        "local Dask cluster that --runner DaskRunner starts without --dask_client_address (default: all cores)")
    options.add_flags(p, DatasetOptions, groups=groups, names=FLAGS, only=("chunk_size",))
    p.set_defaults(func=run_dataset_command, accepts_extra=True)

    q = subparsers.add_parser("inspect", help="summarise a dataset and plot a few examples")
    q.add_argument("dataset", help="dataset folder (local or gs://) holding dataset_info.json")
    q.add_argument("--split", default="train", help="split to draw the example plot from (default: %(default)s)")
    q.add_argument("--examples", type=int, default=4, help="spectrogram pairs in the plot (default: %(default)s)")
    q.add_argument("--plot", default=None, help="PNG path, local or gs:// (default: DATASET/inspect.png)")
    q.add_argument("--json", default=None, help="also write the summary as JSON to this path (local or gs://)")
    q.add_argument("--verify", action="store_true",
                   help="read every record: check CRCs, the record schema and counts (default: shard sizes only); "
                        "exit status 1 when anything is damaged")
    q.set_defaults(func=run_inspect_command)


def run_dataset_command(args, extra) -> int:
    from beam_pipelines import runners

    if runners.is_dask(extra):
        try:
            runners.require_dask()
        except ImportError as err:
            raise ValueError(str(err)) from None
    refuse_unknown_beam_args(extra, "dataset")
    try:
        return _run_dataset(args, extra)
    except (ValueError, OSError) as err:
        raise options.with_flags(err, FLAGS) from err


def _run_dataset(args, extra) -> int:
    from beam_pipelines.launcher import run_dataset
    from beam_pipelines.splits import parse_fractions

    voice_dir, noise_dir = args.voice_dir, args.noise_dir
    if args.demo:
        from beam_pipelines.demo import make_demo_corpus

        from tfrecord_schema import paths

        voice_dir, noise_dir = make_demo_corpus(paths.join(paths.dirname(args.output), "demo_corpus"))
    else:  # one folder as itself (the names and dataset_info of a single corpus), several as a tuple
        voice_dir = voice_dir and (voice_dir[0] if len(voice_dir) == 1 else tuple(voice_dir))
        noise_dir = noise_dir and (noise_dir[0] if len(noise_dir) == 1 else tuple(noise_dir))
    if not voice_dir or not noise_dir:
        raise ValueError("dataset needs --voice-dir and --noise-dir (or --demo for the built-in demo corpus)")
    rir_dir = tuple(args.rir_dir or ())
    if args.kind == SOURCES:
        _refuse_mixing_flags(args)
    if args.sample_rate is None:
        args.sample_rate = SOURCES_DEFAULT_RATE if args.kind == SOURCES else SpectrogramConfig.sample_rate
    args.dtype = args.dtype or SpectrogramConfig.dtype
    if args.kind == SOURCES:
        from tfrecord_schema.sources import RATES

        if args.sample_rate not in RATES:
            raise ValueError(f"A source store's sample_rate is one of {RATES} Hz. Received: --sample-rate "
                             f"{args.sample_rate}")
    levels = {"level_range": None, "snr_range_db": args.snr_db} if args.snr_db is not None else \
        {"level_range": args.noise_level} if args.noise_level is not None else {}
    opts = options.from_args(
        DatasetOptions, args, voice_dir=voice_dir, noise_dir=noise_dir, rir_dir=rir_dir,
        config=SpectrogramConfig.for_sample_rate(args.sample_rate, dtype=args.dtype),
        mix=options.from_args(MixOptions, args, **levels), augment=augment_options(args),
        split_fractions=parse_fractions(args.split_fractions), max_shard_bytes=int(args.shard_size_mb * 2**20),
        compression=COMPRESSION[args.compression], write_audio=tuple(args.write_audio or ()), overwrite=args.overwrite)
    run_dataset(opts, beam_args=extra, workers=args.workers, arguments=_arguments(args, opts, extra),
                assume_yes=args.yes, break_lock=args.break_lock)
    return 0


# Flags of a spectrogram dataset's mixing; --kind sources refuses them (the trainer mixes on the fly).
_MIXING_FLAGS = ("num_examples", "write_audio", "dtype", "chunk_size", "seed", "noise_level", "snr_db",
                 "loudness_range_dbfs", "augment", *(f.name for f in options.cli_fields(AugmentOptions)))


def _refuse_mixing_flags(args) -> None:
    """ValueError naming the mixing flags given with --kind sources (left out, each is None or False)."""
    given = [FLAGS.get(name, "--" + name.replace("_", "-")) for name in _MIXING_FLAGS
             if getattr(args, name, None) not in (None, False)]
    if given:
        raise ValueError(f"--kind sources stores the input files unmixed, so {', '.join(given)} do not apply: "
                         "examples are mixed (and augmented) on the fly by `speech-enhance train`. Remove them, or "
                         "build a spectrogram dataset (--kind spectrogram).")


def _arguments(args, opts: DatasetOptions, extra: list[str]) -> dict:
    """The command line as dataset_info.json records it ("arguments"): every flag by its argparse name,
    in the order of `--help`, the value given or its default (the augmentation flags: None when not
    given), then the Beam arguments."""
    given = {**vars(args), "noise_classes": args.noise_classes_file, "num_examples": opts.num_examples,
             "write_audio": list(args.write_audio or ()), "seed": opts.mix.seed,
             "loudness_dbfs": opts.mix.loudness_range_dbfs, "chunk_size": opts.chunk_size,
             "voice_dir": opts.voice_dir, "noise_dir": opts.noise_dir}
    order = ("voice_dir", "noise_dir", "demo", "noise_classes", "splits_file", "split_fractions", "output",
             "num_examples", "shard_size_mb", "compression", "dtype", "sample_rate", "write_audio", "overwrite", "yes",
             "seed", "noise_level", "snr_db", "loudness_dbfs", "augment",
             *(f.name for f in options.cli_fields(AugmentOptions)), "workers", "chunk_size")
    if opts.kind == SOURCES:
        order = ("voice_dir", "noise_dir", "rir_dir", "demo", "noise_classes", "splits_file", "split_fractions",
                 "output", "kind", "shard_size_mb", "compression", "sample_rate", "overwrite", "yes", "workers")
        given.update(rir_dir=opts.rir_dir)
    return {**{name: given[name] for name in order}, "beam_args": list(extra)}


def augment_options(args) -> AugmentOptions:
    """AugmentOptions from the parsed flags: the recommended set with --augment, else none, with
    each flag given replacing its field."""
    return options.from_args(AugmentOptions, args, base=RECOMMENDED if args.augment else AugmentOptions())


def run_inspect_command(args, extra) -> int:
    from beam_pipelines.inspect_dataset import inspect_dataset

    summary = inspect_dataset(args.dataset, split=args.split, examples=args.examples, plot_path=args.plot,
                              json_path=args.json, verify=args.verify)
    return 1 if summary["problems"] else 0
