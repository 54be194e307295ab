"""`speech-enhance dataset` and `speech-enhance inspect` (argument parsing only; work is in the library)."""

from __future__ import annotations

import argparse

DATASET_HELP = """Blend voices with noise and write magnitude/phase spectrogram TFRecord shards.

Apache Beam's own options are passed to Beam, e.g. for Dataflow:
  --runner DataflowRunner --project P --region R --temp_location gs://B/tmp --setup_file ./setup.py
Any other unknown option is an error. Locally the job runs on Beam's FnApiRunner with one process
per core (--workers). On a Dask cluster (pip install 'speech-enhance[dask]'):
  --runner DaskRunner --dask_client_address tcp://HOST:PORT
or --runner DaskRunner alone for a local one with --workers processes.

The dataset is built in OUTPUT.incomplete beside OUTPUT and moved into place when finished: a failed
build leaves an existing dataset as it was. OUTPUT must be new, empty, or a dataset (--overwrite)."""

# Library argument names in error messages, as the flags a CLI user typed.
_FLAG_NAMES = (("overwrite=True", "--overwrite"), ("assume_yes=True", "--yes"), ("voice_dir=", "--voice-dir "),
               ("noise_dir=", "--noise-dir "), ("num_examples=", "--num-examples "), ("output=", "--output "),
               ("max_shard_bytes=", "--shard-size-mb (in bytes) "), ("chunk_size=", "--chunk-size "),
               ("break_lock=True", "--break-lock"))
# AugmentOptions' arguments and their flags (named bare too: "reverb_probability must be ...").
_AUGMENT_FLAGS = (("reverb_probability", "--reverb-probability"), ("rt60_range", "--rt60"),
                  ("early_reflections_ms", "--early-reflections-ms"), ("room_count", "--rooms"),
                  ("babble_probability", "--babble-probability"), ("babble_talkers", "--babble-talkers"),
                  ("babble_level_db", "--babble-level-db"), ("speed_probability", "--speed-probability"),
                  ("speed_range", "--speed-range"), ("noise_tilt_db", "--noise-tilt-db"),
                  ("noise_lowpass_probability", "--noise-lowpass-probability"),
                  ("noise_lowpass_hz", "--noise-lowpass-hz"))
_FLAG_NAMES += tuple((f"{name}=", f"{flag} ") for name, flag in _AUGMENT_FLAGS) + _AUGMENT_FLAGS


def _as_flags(message: str) -> str:
    for name, flag in _FLAG_NAMES:
        message = message.replace(name, flag)
    return message


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


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH, e.g. 0.2:0.8 or -5:15; received {text!r}") from None
    return lo, hi


def register(subparsers) -> None:
    p = subparsers.add_parser("dataset", help="build a spectrogram dataset (Apache Beam job)", description=DATASET_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("inputs")
    src.add_argument("--voice-dir", action="append", metavar="DIR",
                     help="folder (local or gs://) searched recursively for wav/flac/ogg speech; give it again for "
                          "more corpora (files are then named FOLDER/..., speakers FOLDER:id, FOLDER being each "
                          "folder's name)")
    src.add_argument("--noise-dir", action="append", metavar="DIR",
                     help="folder (local or gs://) searched recursively for wav/flac/ogg noise; may be given more "
                          "than once, like --voice-dir")
    src.add_argument("--demo", action="store_true",
                     help="generate the built-in demo corpus (under OUTPUT/../demo_corpus) and use it as input")
    src.add_argument("--noise-classes", metavar="FILE",
                     help="noise class table: TSV 'file<TAB>class' or ESC-50's esc50.csv (default: NOISE_DIR/classes.tsv "
                          "or NOISE_DIR/meta/esc50.csv if present, else the parent folder name)")
    src.add_argument("--splits", metavar="FILE", dest="splits_file",
                     help="use this split of files (the splits.json format this job writes) instead of hashing")
    src.add_argument("--split-fractions", default="0.8,0.1,0.1",
                     help="train,valid,test shares of speakers, noise files and examples (default: %(default)s)")
    out = p.add_argument_group("output")
    out.add_argument("--output", required=True, help="dataset folder (local or gs://)")
    out.add_argument("--num-examples", type=int, default=2000, help="examples over all splits (default: %(default)s)")
    out.add_argument("--shard-size-mb", type=_shard_size, default=200.0, metavar="MAX",
                     help="largest shard in MiB (2**20 bytes); shards are as even as possible (default: 200)")
    out.add_argument("--compression", choices=["none", "gzip"], default="none", help="shard compression")
    out.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="spectrogram storage dtype")
    out.add_argument("--sample-rate", type=int, default=8000,
                     help="model sample rate in Hz; STFT geometry is derived for multiples of 8000 (default: %(default)s)")
    out.add_argument("--write-audio", nargs="+", default=[], metavar="SPLIT",
                     help="also write these splits' mixtures and clean voices as wav pairs under OUTPUT/audio/SPLIT/")
    out.add_argument("--overwrite", action="store_true",
                     help="replace the dataset in --output once the new one is finished (never a folder holding "
                          "other files)")
    out.add_argument("--yes", action="store_true",
                     help="build even if the estimated size exceeds the free space of a local --output")
    out.add_argument("--break-lock", action="store_true",
                     help="take over OUTPUT.incomplete.lock, which a build holds while it runs; only for a build "
                          "that is gone (its machine crashed). A lock of a process of this host that no longer "
                          "runs is taken over without it")
    mix = p.add_argument_group("mixing")
    mix.add_argument("--seed", type=int, default=0, help="global seed; with the same arguments, the same examples")
    levels = mix.add_mutually_exclusive_group()
    levels.add_argument("--noise-level", type=_range, default=None, metavar="LOW:HIGH",
                        help="noise-to-voice RMS ratio range, voice at its active speech level (default: 0.2:0.8, "
                             "about 14 to 2 dB SNR)")
    levels.add_argument("--snr-db", type=_range, default=None, metavar="LOW:HIGH",
                        help="draw an active-speech SNR in dB instead of a level, e.g. -5:15")
    mix.add_argument("--loudness-dbfs", type=_range, default=(-35.0, -15.0), metavar="LOW:HIGH",
                     help="mixture RMS range in dBFS (default: -35:-15); never clips")
    augment = p.add_argument_group(
        "augmentation",
        "All off by default. --augment turns on the recommended set (docs/dataset.md, Augmentation); each flag "
        "below overrides its part of it. Every draw is deterministic from --seed and the example.")
    augment.add_argument("--augment", action="store_true",
                         help="the recommended set: reverb 0.3 (RT60 0.1:0.9), babble 0.15 (1:6 talkers), speed 0.3 "
                              "(0.9:1.1), noise tilt +-6 dB/octave, noise low-pass 0.2 (1000:3500 Hz)")
    augment.add_argument("--reverb-probability", type=float, metavar="P",
                         help="share of examples whose voice and noise are convolved with a simulated room's "
                              "impulse responses (pyroomacoustics image-source method); the clean target keeps the "
                              "direct path and early reflections (default: 0, or 0.3 with --augment)")
    augment.add_argument("--rt60", type=_range, metavar="LOW:HIGH", dest="rt60_range",
                         help="RT60 range of the simulated rooms in seconds (default: 0.1:0.9)")
    augment.add_argument("--early-reflections-ms", type=float, metavar="MS",
                         help="reflections after the direct path kept in the clean target, in ms (default: 50)")
    augment.add_argument("--rooms", type=int, metavar="N", dest="room_count",
                         help="rooms simulated once per worker and drawn from per example (default: 100; about "
                              "0.035 s each)")
    augment.add_argument("--babble-probability", type=float, metavar="P",
                         help="share of examples whose noise is babble: excerpts of other speakers of the same "
                              "split, noise class 'babble' (default: 0, or 0.15 with --augment)")
    augment.add_argument("--babble-talkers", type=_range, metavar="LOW:HIGH",
                         help="number of babble talkers, whole numbers (default: 1:6)")
    augment.add_argument("--babble-level-db", type=float, metavar="DB",
                         help="each babble talker's level is drawn within +- DB of the others (default: 3)")
    augment.add_argument("--speed-probability", type=float, metavar="P",
                         help="share of examples whose voice is resampled by a speed factor, changing tempo and "
                              "pitch (default: 0, or 0.3 with --augment)")
    augment.add_argument("--speed-range", type=_range, metavar="LOW:HIGH",
                         help="speed factor range, >1 faster and higher (default: 0.9:1.1)")
    augment.add_argument("--noise-tilt-db", type=float, metavar="DB",
                         help="tilt every noise's spectrum by a random slope within +-DB dB/octave around 1 kHz "
                              "(default: 0 = off, or 6 with --augment)")
    augment.add_argument("--noise-lowpass-probability", type=float, metavar="P",
                         help="share of examples whose noise is low-passed at a random cut-off (default: 0, or 0.2 "
                              "with --augment)")
    augment.add_argument("--noise-lowpass-hz", type=_range, metavar="LOW:HIGH",
                         help="low-pass cut-off range in Hz, below half the sample rate (default: 1000:3500)")
    run = p.add_argument_group("execution")
    run.add_argument("--workers", type=_positive_int, default=None,
                     help="local worker processes: FnApiRunner's, or those of the local Dask cluster that "
                          "--runner DaskRunner starts without --dask_client_address (default: all cores)")
    run.add_argument("--chunk-size", type=int, default=100, help="examples per work item (default: %(default)s)")
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
        raise type(err)(_as_flags(str(err))) from err


def _run_dataset(args, extra) -> int:
    from beam_pipelines.launcher import run_dataset
    from beam_pipelines.planning import DatasetOptions, MixOptions
    from beam_pipelines.splits import parse_fractions
    from tfrecord_schema.config import SpectrogramConfig

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
    config = SpectrogramConfig.for_sample_rate(args.sample_rate, dtype=args.dtype)
    if args.snr_db is not None:
        mix = MixOptions(seed=args.seed, level_range=None, snr_range_db=args.snr_db,
                         loudness_range_dbfs=args.loudness_dbfs)
    else:
        mix = MixOptions(seed=args.seed, level_range=args.noise_level or (0.2, 0.8),
                         loudness_range_dbfs=args.loudness_dbfs)
    opts = DatasetOptions(
        voice_dir=voice_dir, noise_dir=noise_dir, output=args.output, num_examples=args.num_examples,
        config=config, mix=mix, augment=augment_options(args), split_fractions=parse_fractions(args.split_fractions), splits_file=args.splits_file,
        noise_classes_file=args.noise_classes, max_shard_bytes=int(args.shard_size_mb * 2**20),
        chunk_size=args.chunk_size, compression="GZIP" if args.compression == "gzip" else "",
        write_audio=tuple(args.write_audio), overwrite=args.overwrite)
    arguments = {k: v for k, v in vars(args).items()
                 if k not in ("func", "accepts_extra", "verbose", "command", "break_lock")}
    arguments.update(voice_dir=voice_dir, noise_dir=noise_dir, beam_args=list(extra))
    run_dataset(opts, beam_args=extra, workers=args.workers, arguments=arguments, assume_yes=args.yes,
                break_lock=args.break_lock)
    return 0


def augment_options(args):
    """AugmentOptions from the parsed flags: the recommended set with --augment, else none, with
    each flag given replacing its field."""
    import dataclasses

    from beam_pipelines import augmentation as aug

    base = aug.RECOMMENDED if args.augment else aug.AugmentOptions()
    given = {name: getattr(args, name) for name, _ in _AUGMENT_FLAGS if getattr(args, name, None) is not None}
    return dataclasses.replace(base, **given)


def run_inspect_command(args, extra) -> int:
    from beam_pipelines.inspect_dataset import inspect_dataset

    summary = inspect_dataset(args.dataset, split=args.split, examples=args.examples, plot_path=args.plot,
                              json_path=args.json, verify=args.verify)
    return 1 if summary["problems"] else 0
