"""`speech-enhance dataset` and `speech-enhance inspect` (argument parsing only; work is in the library)."""

from __future__ import annotations

import argparse
import os

DATASET_HELP = """Blend voices with noise and write magnitude/phase spectrogram TFRecord shards.

Arguments this command does not know are passed to Apache Beam, e.g. for Dataflow:
  --runner DataflowRunner --project P --region R --temp_location gs://B/tmp --setup_file ./setup.py
Locally it runs on Beam's FnApiRunner with one process per core (--workers)."""


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
    src.add_argument("--voice-dir", help="folder (local or gs://) searched recursively for wav/flac/ogg speech")
    src.add_argument("--noise-dir", help="folder (local or gs://) searched recursively for wav/flac/ogg noise")
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
    out.add_argument("--shard-size-mb", type=_range, default=(100.0, 200.0), metavar="MIN:MAX",
                     help="target shard size range in MiB (2**20 bytes; default: 100:200)")
    out.add_argument("--compression", choices=["none", "gzip"], default="none", help="shard compression")
    out.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="spectrogram storage dtype")
    out.add_argument("--sample-rate", type=int, default=8000,
                     help="model sample rate in Hz; STFT geometry is derived for multiples of 8000 (default: %(default)s)")
    out.add_argument("--write-audio", nargs="+", default=[], metavar="SPLIT",
                     help="also write these splits' mixtures and clean voices as wav pairs under OUTPUT/audio/SPLIT/")
    out.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --output")
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
    run = p.add_argument_group("execution")
    run.add_argument("--workers", type=int, default=None, help="local worker processes (default: all cores)")
    run.add_argument("--chunk-size", type=int, default=100, help="examples per work item (default: %(default)s)")
    p.set_defaults(func=run_dataset_command, accepts_extra=True)

    q = subparsers.add_parser("inspect", help="summarise a dataset and plot a few examples")
    q.add_argument("dataset", help="dataset folder (local or gs://) holding dataset_info.json")
    q.add_argument("--split", default="train", help="split to draw the example plot from (default: %(default)s)")
    q.add_argument("--examples", type=int, default=4, help="spectrogram pairs in the plot (default: %(default)s)")
    q.add_argument("--plot", default=None, help="PNG path (default: DATASET/inspect.png; local datasets only)")
    q.add_argument("--json", default=None, help="also write the summary as JSON to this path")
    q.set_defaults(func=run_inspect_command)


def run_dataset_command(args, extra) -> int:
    from beam_pipelines import examples as ex
    from beam_pipelines.pipeline import DatasetOptions, run_dataset
    from beam_pipelines.splits import parse_fractions
    from tfrecord_schema.config import SpectrogramConfig

    voice_dir, noise_dir = args.voice_dir, args.noise_dir
    if args.demo:
        from beam_pipelines.demo import make_demo_corpus

        voice_dir, noise_dir = make_demo_corpus(os.path.join(os.path.dirname(os.path.abspath(args.output)), "demo_corpus"))
    if not voice_dir or not noise_dir:
        raise ValueError("dataset needs --voice-dir and --noise-dir (or --demo for the built-in demo corpus)")
    config = SpectrogramConfig.for_sample_rate(args.sample_rate, dtype=args.dtype)
    if args.snr_db is not None:
        mix = ex.MixOptions(seed=args.seed, level_range=None, snr_range_db=args.snr_db,
                            loudness_range_dbfs=args.loudness_dbfs)
    else:
        mix = ex.MixOptions(seed=args.seed, level_range=args.noise_level or (0.2, 0.8),
                            loudness_range_dbfs=args.loudness_dbfs)
    lo, hi = args.shard_size_mb
    opts = DatasetOptions(
        voice_dir=voice_dir, noise_dir=noise_dir, output=args.output, num_examples=args.num_examples,
        config=config, mix=mix, split_fractions=parse_fractions(args.split_fractions), splits_file=args.splits_file,
        noise_classes_file=args.noise_classes, shard_bytes=(int(lo * 2**20), int(hi * 2**20)),
        chunk_size=args.chunk_size, compression="GZIP" if args.compression == "gzip" else "",
        write_audio=tuple(args.write_audio), overwrite=args.overwrite)
    arguments = {k: v for k, v in vars(args).items() if k not in ("func", "accepts_extra", "verbose", "command")}
    arguments.update(voice_dir=voice_dir, noise_dir=noise_dir, beam_args=list(extra))
    run_dataset(opts, beam_args=extra, workers=args.workers, arguments=arguments)
    return 0


def run_inspect_command(args, extra) -> int:
    from beam_pipelines.inspect_dataset import inspect_dataset

    inspect_dataset(args.dataset, split=args.split, examples=args.examples, plot_path=args.plot, json_path=args.json)
    return 0
