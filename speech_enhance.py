"""`speech-enhance`: one command line for the whole toolkit.

Subcommands are registered by each package's `cli` module, which imports nothing heavy at module
level, so `speech-enhance --help` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys

# subcommand -> module that defines `register(subparsers)`.
_COMMAND_MODULES = {
    "dataset": "beam_pipelines.cli",
    "inspect": "beam_pipelines.cli",
    "index": "readers.cli",
    "train": "trainer.cli",
    "predict": "predictor.cli",
    "evaluate": "predictor.cli",
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
    return parser


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
        return int(args.func(args, extra) or 0)
    except (ValueError, OSError) as err:  # OSError: FileNotFoundError, PermissionError, a full disk, ...
        print(f"speech-enhance {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
