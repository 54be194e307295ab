"""One split of a store's splits.json as folders of links, for `speech-enhance evaluate`.

A store built from several voice and noise folders names each file `FOLDER/relative path` in its
splits.json (FOLDER: the folder's base name). This links the files of one split (default: test)
from the folders under --speech and --noise into OUT/voices/FOLDER/... and OUT/noise/FOLDER/...,
and links each noise folder's classes.tsv beside them, so evaluate reads the same noise classes:

    python scripts/store_split_links.py scripts/shared_split/splits_all_folders.json --split valid \
        --speech ../shared/data/speech --noise ../shared/data/noise --out runs/split_valid
    speech-enhance evaluate --voice-dir runs/split_valid/voices --noise-dir runs/split_valid/noise --balance ...

--skip FOLDER leaves a voice or noise folder out (e.g. dns-enrollment-8k for a 16 kHz set).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys


def link_split(splits: dict, roots: dict[str, str], split: str, out: str,
               skip: frozenset[str] = frozenset()) -> dict[str, collections.Counter]:
    """Links the `split` files of each kind ("voices", "noises") under out/{voices,noise}, but those of
    the folders in `skip`; returns the number of files linked per kind and folder. A file missing
    under its root is an error naming it."""
    counts: dict[str, collections.Counter] = {}
    for kind, target in (("voices", "voices"), ("noises", "noise")):
        counts[kind] = collections.Counter()
        for name, member in sorted(splits[kind].items()):
            if member != split or name.split("/", 1)[0] in skip:
                continue
            source = os.path.join(roots[kind], name)
            if not os.path.isfile(source):
                raise FileNotFoundError(f"{source}: named in the splits ({kind}, {split}) but not found")
            destination = os.path.join(out, target, name)
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            if not os.path.lexists(destination):
                os.symlink(os.path.abspath(source), destination)
            counts[kind][name.split("/", 1)[0]] += 1
        if kind == "noises":
            for folder in counts[kind]:
                classes = os.path.join(roots[kind], folder, "classes.tsv")
                destination = os.path.join(out, target, folder, "classes.tsv")
                if os.path.isfile(classes) and not os.path.lexists(destination):
                    os.symlink(os.path.abspath(classes), destination)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("splits", help="a store's splits.json")
    parser.add_argument("--speech", required=True, help="the folder holding the voice folders")
    parser.add_argument("--noise", required=True, help="the folder holding the noise folders")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", required=True)
    parser.add_argument("--skip", action="append", default=[], metavar="FOLDER",
                        help="leave this voice or noise folder out (repeatable)")
    args = parser.parse_args(argv)
    with open(args.splits) as handle:
        splits = json.load(handle)
    counts = link_split(splits, {"voices": args.speech, "noises": args.noise}, args.split, args.out,
                        frozenset(args.skip))
    for kind, by_folder in counts.items():
        print(f"{kind}: {sum(by_folder.values())} files ({', '.join(f'{k} {v}' for k, v in sorted(by_folder.items()))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
