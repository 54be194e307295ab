"""The shared CLI convention (tfrecord_schema/options.py): flags built from an options dataclass."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from tfrecord_schema.options import add_flags, flag_names, flag_terms, from_args, option, with_flags


@dataclasses.dataclass(frozen=True)
class _Options:
    source: str = option(help="folder to read", flag="--input", metavar="DIR")
    batch_size: int | None = option(None, "windows per batch")
    overlap: float = option(0.5, "fraction of a window shared with the next")
    head: str | None = option(None, "which head", choices=("mask", "noise"))
    snrs: tuple = option((-5.0, 0.0), "input SNRs", nargs="+", parse=float)
    overwrite: bool = option(False, "replace what is there")
    seed: int = option(0, "seed", cli=False)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="x")
    add_flags(parser, _Options)
    return parser


def test_flags_carry_the_declared_defaults_types_and_choices():
    parser = _parser()
    text = " ".join(parser.format_help().split())
    assert "--input DIR" in text and "(default: 0.5)" in text and "(default: -5.0 0.0)" in text
    assert "(default: --no-overwrite)" in text and "--seed" not in text
    options = from_args(_Options, parser.parse_args(["--input", "a", "--batch-size", "4", "--head", "none",
                                                      "--snrs", "1", "2", "--overwrite"]))
    assert options == _Options(source="a", batch_size=4, head=None, snrs=[1.0, 2.0], overwrite=True)
    assert from_args(_Options, parser.parse_args(["--input", "a"])) == _Options(source="a")
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --input has no default: required


def test_library_names_are_written_as_flags_in_messages():
    flags = flag_names(_Options, extra={"output_dir": "--output"})
    assert flag_terms("batch_size must be positive. Received: batch_size=0", flags) == \
        "--batch-size must be positive. Received: --batch-size 0"
    assert flag_terms("pass overwrite=True or change output_dir", flags) == "pass --overwrite or change --output"
    assert flag_terms("overlap must be in [0, 1). Received: overlap=1.5.", flags) == \
        "--overlap must be in [0, 1). Received: --overlap 1.5."
    # A plain word in prose stays; the seed has no flag and stays too.
    assert flag_terms("the overlap of windows; seed=3", flags) == "the overlap of windows; seed=3"


def test_a_renamed_error_keeps_its_type_and_attributes():
    class ReasonError(ValueError):
        def __init__(self, reason: str, message: str):
            super().__init__(message)
            self.reason = reason

    renamed = with_flags(ReasonError("bad", "source='x' is missing"), flag_names(_Options))
    assert type(renamed) is ReasonError and renamed.reason == "bad" and str(renamed) == "--input 'x' is missing"
