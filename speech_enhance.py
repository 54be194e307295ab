"""`speech-enhance`: one command line for the whole toolkit.

Subcommands are registered by each package's `cli` module, which imports nothing heavy at module
level, so `speech-enhance --help` answers at once.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import logging
import re
import signal
import sys
import threading

# subcommand -> module that defines `register(subparsers)`.
_COMMAND_MODULES = {
    "dataset": "beam_pipelines.cli",
    "inspect": "beam_pipelines.cli",
    "index": "readers.cli",
    "train": "trainer.cli",
    "predict": "predictor.cli",
    "evaluate": "predictor.cli",
    "select": "predictor.evaluation.select_cli",
    "export": "predictor.export",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speech-enhance",
        description="Build spectrogram datasets, train U-Net denoisers, denoise and evaluate audio.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    seen = set()
    for module_name in _COMMAND_MODULES.values():
        if module_name in seen:
            continue
        seen.add(module_name)
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:  # a command whose optional dependencies are not installed
            logging.getLogger(__name__).debug("skipping %s: %s", module_name, err)
            continue
        module.register(subparsers)
    if "train" in subparsers.choices:
        # `train --backend torch` reads its batches through the PyTorch reader of the shards. The trainer
        # may not import the readers (they are built on it), so the command line hands them over
        # (`trainer.train`'s `torch_inputs`; the module imports torch only when called).
        from readers.torch_training import training_loaders

        subparsers.choices["train"].set_defaults(torch_inputs=training_loaders)
    return parser


# What Ctrl-C (or SIGTERM) leaves, per command: the one line printed on stderr instead of a traceback,
# formatted with the command's arguments. Each command has kept what resuming needs and removed its
# own temporaries by the time the KeyboardInterrupt reaches `main`.
_INTERRUPTED = {
    "dataset": "interrupted; the finished chunks are kept in {output}.incomplete: run the same command again to "
               "resume the build",
    "inspect": "interrupted; nothing was changed",
    "index": "interrupted; the shard indexes written so far are kept: run the same command again to finish",
    "train": "interrupted; the backup of the last finished epoch is kept ({work_dir}): run the same command again "
             "to resume",
    "predict": "interrupted; finished outputs are kept and partial ones removed: run the same command again to "
               "resume (it skips the outputs that exist)",
    "evaluate": "interrupted before the report was complete (it is written at the end): run the same command "
                "again",
    "select": "interrupted; selection.json and selection.md are written whole at the end: run the same command again",
}
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM


class _Terminated(KeyboardInterrupt):
    """SIGTERM (`kill PID`, a scheduler stopping a job), raised where Ctrl-C's KeyboardInterrupt would
    be, so that it stops a command the same way: temporaries removed, what resuming needs kept, the
    futures of a Dask cluster cancelled."""


def _work_dir(args: argparse.Namespace) -> str:
    """Where `train` keeps its backup (`trainer.train`: --work-dir, else MODEL_DIR/training)."""
    work_dir = getattr(args, "work_dir", None)
    if work_dir:
        return work_dir
    model_dir = getattr(args, "model_dir", None) or "MODEL_DIR"
    return model_dir.rstrip("/") + "/training"


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises `_Terminated` in the main thread while the block runs (the default would end
    the process at once, with no `finally` run); the previous handler is put back afterwards."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return

    def terminated(signum, frame):
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _join_negative_values(argv: list[str]) -> list[str]:
    """Lets `--snr-db -5:15` through: argparse would take a value starting with '-' for an option."""
    out: list[str] = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and re.match(r"^-\d[\d.]*:", token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = _join_negative_values(list(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Runner chatter (gcsio's listing lines, worker start-up notes) only with --verbose.
    logging.getLogger("apache_beam").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        with _sigterm_as_interrupt():
            return int(args.func(args, extra) or 0)
    except KeyboardInterrupt as err:
        # One line, no traceback: the command's own `finally` blocks have already stopped its threads,
        # processes and Beam workers and removed its temporaries on the way up.
        how = "terminated" if isinstance(err, _Terminated) else "interrupted"
        line = _INTERRUPTED.get(args.command, "interrupted").replace("interrupted", how, 1)
        line = line.format_map(collections.defaultdict(str, vars(args), work_dir=_work_dir(args)))
        print(f"speech-enhance {args.command}: {line}", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(err, _Terminated) else EXIT_INTERRUPTED
    except (ValueError, OSError) as err:  # OSError: FileNotFoundError, PermissionError, a full disk, ...
        print(f"speech-enhance {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
