"""The speaker- and noise-disjoint split of the shared recordings used for the shipped model.

Follows the data README: training and validation voices from train-clean-100 (validation split off
by speaker), test voices from test-other; noise: every 5th file of each class in hu-nonspeech's
classes.tsv, two babble files and one street file of emgse-test are held out for testing; the
rest (and the two speech-commands background noises) are for training and validation.

Writes, under --out:
  splits.json      for `speech-enhance dataset --splits` (voices relative to train-clean-100,
                   noises relative to the noise folder)
  classes.tsv      noise classes for `--noise-classes`, paths relative to the noise folder
  heldout_noise/   symbolic links to the held-out noise files, with their classes.tsv, for
                   `speech-enhance evaluate --noise-dir`
  splits_two_corpora.json
                   the same for a build from two voice folders, train-clean-100 and
                   dns-enrollment-8k (`--voice-dir .../train-clean-100 --voice-dir
                   .../dns-enrollment-8k`): voices named `FOLDER/relative path`, as the dataset job
                   names them when given several folders; one DNS speaker in ten validates
  valid_voices/, valid_noise/
                   links to the validation speakers' files (both corpora) and the validation noise
                   files (with classes.tsv): the validation *evaluation* set, on which variants are
                   chosen before the test set is scored
  valid_voices_librispeech/
                   the train-clean-100 validation speakers alone: read LibriSpeech like the test
                   speakers of test-other, for choosing between variants trained on different corpora
  splits_all_folders.json
                   the same held-out test set for a build from every speech folder but the VoxCeleb
                   interferers (ALL_VOICE_FOLDERS, in that order) and every noise folder (each named by
                   its base name): LibriSpeech as in splits.json plus test-other for testing, the
                   other corpora's speakers within each corpus and the other noise files within each
                   class hashed as the dataset job hashes them (0.8/0.1/0.1), so that validation and
                   test hold speakers of every corpus; the noise files of splits.json keep their split. A 16 kHz build from the same file simply
                   leaves out the 8 kHz-only dns-enrollment-8k.

    python scripts/shared_data_split.py --data ../shared/data --out runs/shared_split
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from beam_pipelines import audio as audio_lib  # noqa: E402  (the repository root is put on the path above)
from beam_pipelines import splits as splits_lib  # noqa: E402

EMGSE_CLASSES = {"car_noise_idle_noise_60_mph.wav": "car", "engine.wav": "engine", "street.wav": "street",
                 "street_noise.wav": "street", "white.wav": "white"}
EMGSE_HELDOUT = {"one_female_english.wav", "two_male_one_female_english.wav", "street_noise.wav"}
BACKGROUND_CLASSES = {"doing_the_dishes.wav": "kitchen", "exercise_bike.wav": "machine"}
ALL_VOICE_FOLDERS = ("librispeech", "dns-enrollment-8k", "commonvoice-hsb", "grid", "lombard-grid")
HASHED_FRACTIONS = (0.8, 0.1, 0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--out", default="runs/shared_split")
    parser.add_argument("--valid-speakers", type=int, default=12, help="train-clean-100 speakers held for validation")
    parser.add_argument("--dns-valid-every", type=int, default=10,
                        help="one dns-enrollment-8k speaker in this many validates (by a stable hash; default 10)")
    args = parser.parse_args()
    noise_root = os.path.join(args.data, "noise")
    os.makedirs(os.path.join(args.out, "heldout_noise"), exist_ok=True)

    classes: dict[str, str] = {}
    with open(os.path.join(noise_root, "hu-nonspeech", "classes.tsv")) as f:
        rows = [r for r in csv.reader(f, dialect="excel-tab")][1:]
    per_class: dict[str, list[str]] = {}
    for name, cls in rows:
        per_class.setdefault(cls, []).append(name)
    noise_split: dict[str, str] = {}
    for cls, names in per_class.items():
        names.sort(key=lambda n: int(n[1:-4]))
        for i, name in enumerate(names):
            rel = f"hu-nonspeech/{name}"
            classes[rel] = cls
            noise_split[rel] = "test" if i % 5 == 4 else "train"
    for name in sorted(os.listdir(os.path.join(noise_root, "emgse-test"))):
        rel = f"emgse-test/{name}"
        classes[rel] = EMGSE_CLASSES.get(name, "babble")
        noise_split[rel] = "test" if name in EMGSE_HELDOUT else "train"
    for name, cls in BACKGROUND_CLASSES.items():
        rel = f"speech-commands-background/{name}"
        classes[rel] = cls
        noise_split[rel] = "train"
    # Validation noise: every 6th training file (by a stable hash), so validation sees unseen noise files too.
    for rel in sorted(r for r, s in noise_split.items() if s == "train"):
        if int(hashlib.sha1(rel.encode()).hexdigest(), 16) % 6 == 0:
            noise_split[rel] = "valid"

    voices = sorted(os.listdir(os.path.join(args.data, "speech", "librispeech", "train-clean-100")))
    voices = [v for v in voices if v.endswith(".flac")]
    speakers = sorted({v.split("-")[0] for v in voices}, key=lambda s: hashlib.sha1(s.encode()).hexdigest())
    valid = set(speakers[: args.valid_speakers])
    voice_split = {v: ("valid" if v.split("-")[0] in valid else "train") for v in voices}

    with open(os.path.join(args.out, "splits.json"), "w") as f:
        json.dump({"voices": voice_split, "noises": {k: v for k, v in noise_split.items() if v != "test"}}, f, indent=1)
    with open(os.path.join(args.out, "classes.tsv"), "w") as f:
        f.write("file\tclass\n" + "".join(f"{k}\t{v}\n" for k, v in sorted(classes.items())))
    held = os.path.join(args.out, "heldout_noise")
    lines = ["file\tclass"]
    for rel in sorted(r for r, s in noise_split.items() if s == "test"):
        link = os.path.join(held, rel.replace("/", "__"))
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(os.path.join(noise_root, rel)), link)
        lines.append(f"{os.path.basename(link)}\t{classes[rel]}")
    with open(os.path.join(held, "classes.tsv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    # Two corpora: the same split for train-clean-100, and the DNS speakers split by a hash of their name.
    dns_root = os.path.join(args.data, "speech", "dns-enrollment-8k")
    dns_split = {}
    for speaker in sorted(os.listdir(dns_root)) if os.path.isdir(dns_root) else []:
        folder = os.path.join(dns_root, speaker)
        split = "valid" if int(hashlib.sha1(speaker.encode()).hexdigest(), 16) % args.dns_valid_every == 0 else "train"
        for name in sorted(os.listdir(folder)):
            if name.endswith(".flac"):
                dns_split[f"dns-enrollment-8k/{speaker}/{name}"] = split
    two = {f"train-clean-100/{v}": s for v, s in voice_split.items()} | dns_split
    with open(os.path.join(args.out, "splits_two_corpora.json"), "w") as f:
        json.dump({"voices": two, "noises": {k: v for k, v in noise_split.items() if v != "test"}}, f, indent=1)
    valid_voices = {rel: os.path.join(args.data, "speech", "librispeech", rel)
                    if rel.startswith("train-clean-100/") else os.path.join(args.data, "speech", rel)
                    for rel, s in two.items() if s == "valid"}
    _link_folder(os.path.join(args.out, "valid_voices"), valid_voices)
    _link_folder(os.path.join(args.out, "valid_voices_librispeech"),
                 {rel: path for rel, path in valid_voices.items() if rel.startswith("train-clean-100/")})
    valid_noise = {rel: os.path.join(noise_root, rel) for rel, s in noise_split.items() if s == "valid"}
    _link_folder(os.path.join(args.out, "valid_noise"), valid_noise)
    with open(os.path.join(args.out, "valid_noise", "classes.tsv"), "w") as f:
        f.write("file\tclass\n" + "".join(f"{rel.replace('/', '__')}\t{classes[rel]}\n" for rel in sorted(valid_noise)))
    print(f"two corpora: {sum(s == 'train' for s in dns_split.values())} train / "
          f"{sum(s == 'valid' for s in dns_split.values())} valid dns-enrollment-8k files; validation evaluation "
          f"folders: {sum(s == 'valid' for s in two.values())} voice files, {len(valid_noise)} noise files")
    every = all_folders_split(args.data, voice_split, noise_split)
    with open(os.path.join(args.out, "splits_all_folders.json"), "w") as f:
        json.dump(every, f, indent=0, sort_keys=True)
    for role, split_of in every.items():
        print(f"all folders, {role}: " + ", ".join(f"{s} {sum(v == s for v in split_of.values())}"
                                                   for s in ("train", "valid", "test")))
    counts = {s: sum(v == s for v in noise_split.values()) for s in ("train", "valid", "test")}
    print(f"voices: {sum(v == 'train' for v in voice_split.values())} train / {len(valid)} valid speakers' files; "
          f"noises: {counts}; written to {args.out}")


def all_folders_split(data: str, librispeech: dict[str, str], noises: dict[str, str]) -> dict[str, dict[str, str]]:
    """{"voices": {name: split}, "noises": {name: split}} for a build from ALL_VOICE_FOLDERS and every
    noise folder, names as the dataset job gives them (FOLDER/relative path): LibriSpeech
    train-clean-100 as `librispeech` (train/valid), test-other for testing; the other corpora's
    speakers hashed as the job hashes them, within each corpus; the other noise files hashed within
    each class; `noises` (relative to the noise folder) kept."""
    voices: dict[str, str] = {}
    hashed_speakers: dict[str, str] = {}
    for folder in ALL_VOICE_FOLDERS:
        for rel in sorted(audio_lib.list_audio_identities(os.path.join(data, "speech", folder))):
            name = f"{folder}/{rel}"
            if folder == "librispeech":
                corpus, _, file = rel.partition("/")
                voices[name] = "test" if corpus == "test-other" else librispeech.get(file, "")
            else:
                hashed_speakers[name] = f"{folder}:{splits_lib.speaker_of(rel)}"
    # Stratified by corpus, so that validation and test hold speakers of every corpus.
    corpus_of = {speaker: speaker.split(":", 1)[0] for speaker in hashed_speakers.values()}
    speaker_split = splits_lib.assign_groups(hashed_speakers.values(), HASHED_FRACTIONS, salt="voice",
                                             strata=corpus_of)
    voices.update({name: speaker_split[speaker] for name, speaker in hashed_speakers.items()})
    noise_root = os.path.join(data, "noise")
    split_of = dict(noises)
    hashed, classes = [], {}
    for folder in sorted(os.listdir(noise_root)):
        table = (splits_lib.find_class_table(os.path.join(noise_root, folder)) or ({}, ""))[0]
        for rel in sorted(audio_lib.list_audio_identities(os.path.join(noise_root, folder))):
            name = f"{folder}/{rel}"
            if name not in split_of:
                hashed.append(name)
                classes[name] = splits_lib.noise_class_of(rel, table)
    split_of.update(splits_lib.assign_groups(hashed, HASHED_FRACTIONS, salt="noise", strata=classes))
    return {"voices": {k: v for k, v in voices.items() if v}, "noises": split_of}


def _link_folder(folder: str, files: dict[str, str]) -> None:
    """Symbolic links `folder/REL` (slashes of REL kept as sub-folders) to each file, replacing old links."""
    for rel, target in sorted(files.items()):
        link = os.path.join(folder, rel.replace("/", "__"))
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(os.path.abspath(target), link)


if __name__ == "__main__":
    main()
