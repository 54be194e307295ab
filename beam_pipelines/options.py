"""What the dataset job is asked for, checked when built: `DatasetOptions` (with the mixing's
`mixing.options.MixOptions` and `AugmentOptions`), whose fields declare their defaults, help and flags once (`tfrecord_schema.options`).

Light on purpose: `speech-enhance dataset` builds its flags from these classes for every command's
`--help`, so this module imports the standard library and `tfrecord_schema`'s light modules only.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from mixing.options import AugmentOptions, MixOptions
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.options import option

INPUTS, OUTPUT, EXECUTION = "inputs", "output", "execution"
SPECTROGRAM, SOURCES = "spectrogram", "sources"  # the kinds of store the job writes (`DatasetOptions.kind`)
KINDS = (SPECTROGRAM, SOURCES)
SOURCES_DEFAULT_RATE = 16000  # Hz, a source store's rate when none is given


@dataclasses.dataclass(frozen=True)
class DatasetOptions:
    """Everything the job needs besides Beam's own options.

    `voice_dir` and `noise_dir` are a folder each, or several (a tuple): e.g. LibriSpeech and another
    read-speech corpus. With several, files are named `TAG/relative path` and speaker ids `TAG:id`,
    TAG being the folder's base name, so that speakers of different corpora never merge.

    `kind` "spectrogram" mixes `num_examples` examples and stores their spectrograms (`config`);
    "sources" stores every usable input file as a 16-bit segment at `config.sample_rate` (one of
    `tfrecord_schema.sources.RATES`), for mixing on the fly, and uses neither `num_examples`, `mix`,
    `augment` nor `write_audio`. `rir_dir`: none, one or several folders of recorded room impulse
    responses, split by file like the noises (drawn with `augment.rir_source` "files" or "both").
    """

    voice_dir: str | tuple[str, ...] = option(cli=False)
    noise_dir: str | tuple[str, ...] = option(cli=False)
    output: str = option(help="dataset folder (local or gs://)", group=OUTPUT)
    num_examples: int = option(2000, "examples over all splits", group=OUTPUT)
    config: SpectrogramConfig = option(SpectrogramConfig(), cli=False)
    mix: MixOptions = option(MixOptions(), cli=False)
    augment: AugmentOptions = option(AugmentOptions(), cli=False)
    split_fractions: tuple[float, float, float] = option(
        (0.8, 0.1, 0.1), "train,valid,test shares of speakers, noise files and examples", cli=False)
    splits_file: str | None = option(
        None, "use this split of files (the splits.json format this job writes) instead of hashing", flag="--splits",
        metavar="FILE", group=INPUTS)
    noise_classes_file: str | None = option(
        None, "noise class table: TSV 'file<TAB>class' or ESC-50's esc50.csv", flag="--noise-classes", metavar="FILE",
        group=INPUTS, default_text="NOISE_DIR/classes.tsv or NOISE_DIR/meta/esc50.csv if present, else the parent "
                                   "folder name")
    max_shard_bytes: int = option(
        200 << 20, "largest shard in MiB (2**20 bytes); shards are as even as possible", cli=False)
    chunk_size: int = option(100, "examples per work item", group=EXECUTION)
    compression: str = option("", "shard compression", cli=False)
    write_audio: tuple[str, ...] = option(
        (), "also write these splits' mixtures and clean voices as wav pairs under OUTPUT/audio/SPLIT/", nargs="+",
        metavar="SPLIT", group=OUTPUT, default_text="")
    overwrite: bool = option(False, "replace the dataset in --output once the new one is finished (never a folder "
                                    "holding other files)", cli=False)
    cache_bytes: int = option(2 << 30, cli=False)
    kind: str = option(SPECTROGRAM, "what the job stores: mixed examples as spectrograms, or the decoded input "
                                    "files as 16-bit waveform segments, mixed on the fly by `train`",
                       choices=KINDS, group=OUTPUT)
    rir_dir: str | tuple[str, ...] = option((), cli=False)
    def __post_init__(self) -> None:
        for name in ("voice_dir", "noise_dir", "rir_dir"):
            value = getattr(self, name)
            if not isinstance(value, str):
                value = tuple(str(v) for v in value)
                if not value and name == "rir_dir":
                    object.__setattr__(self, name, ())
                    continue
                if not value:
                    raise ValueError(f"{name} needs at least one folder. Received: {name}=()")
                if len(set(value)) < len(value):
                    raise ValueError(f"{name} names a folder more than once. Received: {name}={value!r}")
                # One folder is given as itself: the same names, ids and dataset_info as ever.
                object.__setattr__(self, name, value[0] if len(value) == 1 else value)
        if self.num_examples <= 0:
            raise ValueError(f"num_examples must be positive. Received: num_examples={self.num_examples}")
        if self.max_shard_bytes <= 0:
            raise ValueError(f"max_shard_bytes must be positive. Received: max_shard_bytes={self.max_shard_bytes}")
        if self.chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive. Received: chunk_size={self.chunk_size}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}. Received: kind={self.kind!r}")
        if self.kind == SOURCES:
            self._check_sources()
        elif self.augment.reverb_probability and self.augment.rir_source != "simulated" and not self.rir_dirs:
            raise ValueError(f"rir_source={self.augment.rir_source!r} draws recorded room impulse responses, and no "
                             "rir_dir gives any. Pass their folder (--rir-dir), or rir_source='simulated'.")
        self.augment.check_sample_rate(self.config.sample_rate)
        quietest = self.config.quietest_loudness_dbfs
        if self.mix.loudness_range_dbfs[0] < quietest:
            lo, hi = self.mix.loudness_range_dbfs
            raise ValueError(f"loudness_range_dbfs={lo:g}:{hi:g} is too quiet for {self.config.dtype} spectrograms: below "
                             f"{quietest:.1f} dBFS the magnitudes underflow the store (all zeros, or below the "
                             f"{self.config.log_floor_db:g} dB floor the model clips to). Use LOW >= {quietest:.1f}, "
                             "e.g. -35:-15.")
        _check_distinct_folders({"voice_dir": self.voice_dirs, "noise_dir": self.noise_dirs, "rir_dir": self.rir_dirs})
        from tfrecord_schema.dataset_info import SPLITS  # with numpy: not on the path of `--help`

        for split in self.write_audio:
            if split not in SPLITS:
                raise ValueError(f"write_audio takes split names from {SPLITS}. Received: write_audio={self.write_audio!r}")

    def _check_sources(self) -> None:
        from tfrecord_schema.sources import RATES  # with numpy: not on the path of `--help`

        if self.config.sample_rate not in RATES:
            raise ValueError(f"A source store's sample_rate is one of {RATES} Hz. "
                             f"Received: sample_rate={self.config.sample_rate}")
        if self.write_audio or self.augment.enabled:
            raise ValueError(f"kind='{SOURCES}' stores the inputs unmixed: write_audio and augment do not apply "
                             "(the trainer mixes and augments on the fly). Received: "
                             f"write_audio={self.write_audio!r}, augment enabled={self.augment.enabled}")

    @property
    def sample_rate(self) -> int:
        """Hz: of the spectrograms, or of a source store's segments."""
        return self.config.sample_rate

    @property
    def rir_dirs(self) -> tuple[str, ...]:
        return (self.rir_dir,) if isinstance(self.rir_dir, str) else self.rir_dir

    @property
    def voice_dirs(self) -> tuple[str, ...]:
        return (self.voice_dir,) if isinstance(self.voice_dir, str) else self.voice_dir

    @property
    def noise_dirs(self) -> tuple[str, ...]:
        return (self.noise_dir,) if isinstance(self.noise_dir, str) else self.noise_dir


def _check_distinct_folders(folders: dict[str, Sequence[str]]) -> None:
    """Refuses input folders that overlap: one folder under two spellings (`vox`, `vox/`, relative and
    absolute, a symbolic link), a folder and one of its subfolders, or a folder given both as voice and
    noise. Their files would be read twice: counted twice, listed in two splits, drawn more often."""
    from tfrecord_schema import paths

    given = [(name, folder) for name, values in folders.items() for folder in values]
    for i, (name_a, a) in enumerate(given):
        for name_b, b in given[i + 1:]:
            if paths.same_location(a, b):
                what = "the same folder"
            elif paths.is_inside(a, b) or paths.is_inside(b, a):
                what = "a folder and a folder inside it"
            else:
                continue
            cross = name_a != name_b
            raise ValueError(f"{name_a}={a!r} and {name_b}={b!r} are {what}: its files would be read twice"
                             f"{' (as voice and as noise)' if cross else ''}. Give each folder once"
                             f"{', and keep voice and noise folders apart' if cross else ''}.")
