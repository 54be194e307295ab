"""One convention for every command's options: a dataclass declares each option once.

A library takes a frozen dataclass of options; each field is made with `option(...)`, which holds its
default, help, choices, CLI flag (by default `--field-name`), argparse group and any value parser. A
command then builds its flags from the dataclass and reads them back:

    @dataclasses.dataclass(frozen=True)
    class PredictOptions:
        batch_size: int | None = option(None, "model windows per batch", parse=int)

    add_flags(parser, PredictOptions)                  # --batch-size, with its help and default
    options = from_args(PredictOptions, parser.parse_args(argv))

Library errors name the library's arguments ("Received: batch_size=0"); `flag_terms` and
`with_flags` write them as the flags a user typed ("Received: --batch-size 0"). Nothing here imports
more than the standard library, so `speech-enhance --help` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping

NONE = "none"  # how a flag spells None for an option with choices (--distribution none)


def option(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,
           choices: tuple | None = None, group: str | None = None, parse: Callable[[str], Any] | None = None,
           nargs: str | None = None, metavar: str | None = None, cli: bool = True,
           default_text: str | None = None, default_factory: Any = dataclasses.MISSING,
           **metadata: Any) -> Any:
    """A dataclass field that is also a command-line option.

    `flag` overrides `--field-name`; `parse` turns the flag's text into the value (argparse's `type`;
    bools get `--x/--no-x`); `cli=False` keeps the field out of the command line; `default_text`
    replaces the "(default: ...)" that the help ends with. Other keywords land in the field's metadata
    (e.g. `resume=True`).
    """
    return dataclasses.field(default=default, default_factory=default_factory, metadata={
        "help": help, "flag": flag, "choices": choices, "group": group, "parse": parse, "nargs": nargs,
        "metavar": metavar, "cli": cli, "default_text": default_text, **metadata})


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of `cls` that have a flag."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", False)]


def flag_of(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def flag_names(*classes: type, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Library argument name -> flag, for every field of `classes` with a flag, plus `extra` (names of
    plain function arguments)."""
    names = {f.name: flag_of(f) for cls in classes for f in cli_fields(cls)}
    return {**names, **(extra or {})}


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _default_text(field: dataclasses.Field) -> str:
    if field.metadata.get("default_text") is not None:
        return f" (default: {field.metadata['default_text']})" if field.metadata["default_text"] else ""
    default = _default(field)
    if default is dataclasses.MISSING:
        return ""
    if isinstance(default, bool):
        return f" (default: {flag_of(field) if default else '--no-' + flag_of(field)[2:]})"
    if default is None:
        return f" (default: {NONE})" if field.metadata.get("choices") else ""
    if isinstance(default, (tuple, list)):
        return f" (default: {' '.join(map(str, default))})"
    return f" (default: {default})"


def add_flags(parser: argparse.ArgumentParser, cls: type, *, groups: Mapping[str, Any] | None = None,
              names: Mapping[str, str] | None = None, only: Iterable[str] | None = None) -> None:
    """Adds a flag for each field of `cls` that has one (or only those named in `only`), to the
    argument group named by its "group" metadata in `groups`, else to `parser`.

    Every flag's argparse default is None, so `from_args` can tell a flag given from one left out;
    the help ends with the field's default. `names` maps library names in help texts to flags.
    """
    wanted = set(only) if only is not None else None
    terms = {**flag_names(cls), **(names or {})}
    for field in cli_fields(cls):
        if wanted is not None and field.name not in wanted:
            continue
        target = (groups or {}).get(field.metadata.get("group"), parser)
        target.add_argument(flag_of(field), **_argparse_kwargs(field, terms))


def _argparse_kwargs(field: dataclasses.Field, terms: Mapping[str, str]) -> dict[str, Any]:
    help_text = flag_terms(field.metadata["help"], terms) + _default_text(field)
    kwargs: dict[str, Any] = {"dest": field.name, "default": None, "help": help_text.replace("%", "%%")}
    if _default(field) is dataclasses.MISSING:
        kwargs["required"] = True
    kind = str(field.type).split(" ")[0]
    choices, parse = field.metadata.get("choices"), field.metadata.get("parse")
    if kind == "bool" and parse is None:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif choices and parse is None:
        kwargs["choices"] = ((NONE,) if field.default is None else ()) + tuple(choices)
    elif parse is not None:
        kwargs["type"] = parse
    elif kind in ("int", "float"):
        kwargs["type"] = int if kind == "int" else float
    for key in ("nargs", "metavar"):
        if field.metadata.get(key) is not None:
            kwargs[key] = field.metadata[key]
    return kwargs


def given(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The options of `cls` given on the command line ({field name: value}); `none` is None."""
    values = {}
    for field in cli_fields(cls):
        value = getattr(args, field.name, None)
        if value is not None:
            values[field.name] = None if value == NONE and field.metadata.get("choices") else value
    return values


def from_args(cls: type, args: argparse.Namespace, base: Any = None, **overrides: Any) -> Any:
    """`cls` from the flags given in `args` on top of `base` (default: `cls`'s defaults), then
    `overrides`."""
    values = {**given(cls, args), **overrides}
    return dataclasses.replace(base, **values) if base is not None else cls(**values)


def _flag_value(flags: Mapping[str, str], name: str, value: str) -> str:
    if value in ("True", "False"):
        return flags[name] if value == "True" else "--no-" + flags[name][2:]
    return f"{flags[name]} {NONE if value == 'None' else value}"


def flag_terms(text: str, flags: Mapping[str, str]) -> str:
    """`text` (a library message) with the argument names in `flags` written as their flags.

    "Received: batch_size=0" -> "Received: --batch-size 0"; "resume=False" -> "--no-resume";
    "None" -> "none". A bare name is replaced when it contains "_"; a plain word only as the subject
    of "must", so prose such as "the systems of ..." stays as it is.
    """
    if not flags:
        return text
    names = sorted(flags, key=len, reverse=True)
    words = "|".join(map(re.escape, names))
    text = re.sub(rf"(?<![\w.-])({words})=('[^']*'|[^\s,;)]*[^\s,;).])",
                  lambda m: _flag_value(flags, m.group(1), m.group(2)), text)
    underscored = "|".join(map(re.escape, (n for n in names if "_" in n))) or r"(?!x)x"
    return re.sub(rf"(?<![\w.'-])({words})(?=\s+must\b)|(?<![\w.'-])({underscored})\b",
                  lambda m: flags[m.group(1) or m.group(2)], text)


def with_flags(err: BaseException, flags: Mapping[str, str]) -> BaseException:
    """`err` again, of the same type and with its attributes, its text passed through `flag_terms`."""
    text = flag_terms(str(err), flags)
    # Built without calling the class's __init__, whose signature may differ (AudioError takes a
    # reason and a message): the same type, its attributes (e.g. `reason`) and the renamed text.
    renamed = type(err).__new__(type(err), text)
    renamed.args = (text,)
    renamed.__dict__.update(getattr(err, "__dict__", {}))
    return renamed
