"""Random access to a dataset's records without TensorFlow: the shard indexes, record reads by
offset, batch decoding in numpy and the model's inputs and targets.

    split = IndexedSplit("data/demo", "train")        # opens the Dataset and reads the indexes
    len(split); record = split.read(123)              # one serialized record (CRCs checked)
    batch = decode_batch([split.read(i) for i in range(32)], split.config)   # {key: [B, ...] arrays}
    x, y = model_io(batch, split.config, target="noise")                     # float32 [B, frames, bins, 1]

Local shards are read with `os.pread` (one descriptor per shard and process, thread-safe); remote
ones (gs://) through `tfrecord_schema.paths.open_read`, kept open and seeked to the offset (the
path layer has no range-read call; its clients fetch from the seek position on). The framework readers (`readers.torch_data`, `readers.grain_source`)
are thin layers over this module; the features and targets are `trainer.targets`' numpy functions,
the formulas the tf.data pipeline computes in TensorFlow.

Opening a split tunes glibc's allocator for the process (`tfrecord_schema.malloc.tune_malloc`, as
the predictor does): the features' numpy temporaries are spectrogram-sized, which glibc would
otherwise mmap and unmap each time (about 3x slower features).
"""

from __future__ import annotations

import operator
import os
import threading
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from tfrecord_schema import paths, shard_index, wire
from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.dataset import Dataset
from tfrecord_schema.malloc import tune_malloc
from tfrecord_schema.records import FRAMING_BYTES, FramingError, unframe
from tfrecord_schema.schema import (ADDED_IN_3, METADATA_FEATURES, READ_SCHEMA_VERSIONS, SPECTROGRAM_KEYS,
                                    check_schema_version)
from trainer.targets import (check_loss_weighting, check_target, loss_weight, model_features, model_target,
                             target_spectrograms)
from trainer.waveform_loss import WAVEFORM_LOSSES, packed_spectra

# What training the U-Net reads; `raw=True` readers decode every feature.
ALL_KEYS = (*SPECTROGRAM_KEYS, *METADATA_FEATURES)
_NUMPY_KIND = {"bytes": np.str_, "int": np.int64, "float": np.float32}
# What the shard holds at an indexed offset, by `records.FramingError.problem`.
_FRAMING_PROBLEMS = {"size": "holds a {length}-byte record where the index says {indexed}",
                     "length CRC": "has no record header there (length CRC mismatch)",
                     "data CRC": "holds a corrupt record there (data CRC mismatch)"}


class _Files:
    """Open shards of one process: descriptors for local files, file objects for remote ones.
    Re-opened after a fork (DataLoader workers) and left out of pickles (spawned workers, grain)."""

    def __init__(self) -> None:
        self._pid, self._open, self._lock = os.getpid(), {}, threading.Lock()

    def read(self, path: str, offset: int, length: int) -> bytes:
        if self._pid != os.getpid():
            self._pid, self._open, self._lock = os.getpid(), {}, threading.Lock()
        handle = self._open.get(path)
        if handle is None:
            with self._lock:
                handle = self._open.get(path)
                if handle is None:
                    handle = paths.open_read(path) if paths.is_remote(path) else os.open(path, os.O_RDONLY)
                    self._open[path] = handle
        if isinstance(handle, int):
            data = os.pread(handle, length, offset)
        else:
            with self._lock:
                handle.seek(offset)
                data = handle.read(length)
        if len(data) != length:
            raise ValueError(f"{path}: read {len(data)} of {length} bytes at offset {offset}: the shard is shorter "
                             "than its index says (truncated?). Check it with `speech-enhance inspect --verify`.")
        return data

    def close(self) -> None:
        for handle in self._open.values():
            os.close(handle) if isinstance(handle, int) else handle.close()
        self._open = {}


class IndexedSplit:
    """The records of one split of an indexed, uncompressed dataset, addressable by a global index
    0..len-1 (shard by shard, in record order: the order `raw_batches(shuffle=False)` reads).

    Args:
        dataset: the dataset directory (local or gs://) with dataset_info.json, shards and indexes, or
            the already-open `Dataset`.
        split: "train", "valid" or "test".
        check_crc: check both CRCs of every record read (cheap: CRC-32C is hardware accelerated).

    Raises ValueError for a GZIP dataset or one without indexes (`speech-enhance index DATASET`
    adds them), and for an index that does not match dataset_info.json.
    """

    def __init__(self, dataset: str | os.PathLike | Dataset, split: str = "train", *, check_crc: bool = True) -> None:
        self.dataset = dataset if isinstance(dataset, Dataset) else Dataset.open(dataset)
        self.dataset_dir = self.dataset.directory
        self.split = split
        if self.dataset.compression:
            raise ValueError(f"{self.dataset_dir} is {self.dataset.compression}-compressed: records cannot be read at "
                             "their offsets. Read it with the tf.data pipeline, or rebuild it uncompressed.")
        self.config = self.dataset.config
        self.check_crc = check_crc
        self.files = self.dataset.shard_paths(split)
        offsets, lengths, shards = [], [], []
        for number, entry in enumerate(self.dataset.split(split).shards):
            index = self.dataset.read_index(entry)
            # Cheap checks without reading the shard: one entry per record, the records tiling it.
            problems = shard_index.check_index(index, int(entry.num_bytes), int(entry.num_examples),
                                               self.dataset.index_path(entry))
            if problems:
                # The index was checked against dataset_info.json's size; the file itself may differ
                # (a replaced or swapped shard), and then rewriting the index cannot help.
                shard_path = self.files[number]
                if not paths.isfile(shard_path):
                    raise FileNotFoundError(f"{shard_path}: the shard listed in dataset_info.json is missing. "
                                            "Restore it, or build the dataset again.")
                mismatch = self.dataset.check_size(split, entry)
                if mismatch:
                    raise ValueError(mismatch.not_as_built(self.dataset_dir))
                raise ValueError(f"{problems[0]}: the index is damaged. Rewrite it with "
                                 f"`speech-enhance index --overwrite {self.dataset_dir}`.")
            offsets.append(index[:, 0].astype(np.int64))
            lengths.append(index[:, 1].astype(np.int64))
            shards.append(np.full(len(index), number, np.int32))
        self.offsets = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
        self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        self.shards = np.concatenate(shards) if shards else np.zeros(0, np.int32)
        self._files = _Files()
        tune_malloc()

    def __len__(self) -> int:
        return int(self.offsets.size)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_files"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._files = _Files()
        tune_malloc()

    def position(self, i: Any) -> int:
        """`i` as a record position in 0..len-1, by Python's sequence rules: any integer (a numpy or
        0-d torch integer too; negative ones count from the end); a float such as 1.5 is a
        TypeError, out of range an IndexError, each naming the value."""
        try:
            i = operator.index(i)
        except TypeError:
            raise TypeError(f"record indices must be integers, not {type(i).__name__}. Received: {i!r} "
                            f"(the {self.split!r} split holds {len(self)} records)") from None
        return self._check_position(i)

    def _check_position(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"record index out of range: {i} (the {self.split!r} split holds {n} records)")
        return i % n if n else i

    def read(self, i: int) -> bytes:
        """The serialized record (payload) at global position `i`."""
        i = self.position(i)  # int(i) would read 1.5 as record 1
        data = self._files.read(self.files[self.shards[i]], int(self.offsets[i]), int(self.lengths[i]))
        return self._payload(memoryview(data), i)

    def read_run(self, first: int, stop: int) -> list[bytes]:
        """The records first..stop-1, which must lie in one shard: read with a single request."""
        if stop <= first:
            return []
        if self.shards[first] != self.shards[stop - 1]:
            raise ValueError(f"read_run(): records {first}..{stop - 1} span more than one shard")
        start = int(self.offsets[first])
        end = int(self.offsets[stop - 1] + self.lengths[stop - 1])
        view = memoryview(self._files.read(self.files[self.shards[first]], start, end - start))
        out = []
        for i in range(first, stop):
            at = int(self.offsets[i]) - start
            out.append(self._payload(view[at: at + int(self.lengths[i])], i))
        return out

    def runs(self, run_length: int) -> list[tuple[int, int]]:
        """(first, stop) of consecutive records of one shard, at most `run_length` each, in order:
        the units the streaming readers read, shuffle and share out."""
        out = []
        bounds = np.flatnonzero(np.diff(self.shards)) + 1
        for lo, hi in zip([0, *bounds.tolist()], [*bounds.tolist(), len(self)]):
            out.extend((a, min(a + run_length, hi)) for a in range(lo, hi, run_length))
        return out

    def _payload(self, framed: memoryview, i: int) -> bytes:
        try:
            return unframe(framed, self.check_crc)
        except FramingError as err:
            raise ValueError(self._bad(i, _FRAMING_PROBLEMS[err.problem].format(
                length=err.length, indexed=len(framed) - FRAMING_BYTES))) from None

    def _bad(self, i: int, what: str) -> str:
        path = self.files[self.shards[i]]
        return (f"{path}: record {i} of the {self.split!r} split: the shard at offset {int(self.offsets[i])} {what}. "
                f"The index or the shard is damaged: check with `speech-enhance inspect --verify {self.dataset_dir}`, "
                f"rewrite indexes with `speech-enhance index --overwrite {self.dataset_dir}`.")

    def close(self) -> None:
        self._files.close()


def _bytes_value(serialized: bytes, start: int, end: int, name: str) -> tuple[int, int]:
    """(offset, length) of the first value of the bytes Feature in `serialized[start:end]`."""
    for kind, wire_type, a, b in wire.fields(serialized, start, end):
        if kind == 1 and wire_type == 2:  # Feature.bytes_list
            for number, value_type, c, d in wire.fields(serialized, a, b):
                if number == 1 and value_type == 2:
                    return c, d - c
        break
    raise ValueError(f"Not a record of this schema: {name} is not a bytes feature")


def _features(serialized: bytes, wanted: Mapping[bytes, str]) -> dict[str, Any]:
    """{key: value} of the wanted features of one serialized tf.train.Example. A spectrogram's value
    is the (offset, length) of its bytes in `serialized` (read without a copy); other values are
    lists. The features it does not want are skipped, not parsed (`wire.parse_message` parses them all)."""
    out: dict[str, Any] = {}
    for key, key_end, value, value_end in wire.entries(serialized):
        name = wanted.get(serialized[key:key_end]) if key >= 0 and value >= 0 else None
        if name is None:
            continue
        if name in SPECTROGRAM_KEYS:
            out[name] = _bytes_value(serialized, value, value_end, name)
        else:
            out[name] = wire.parse_feature(serialized, value, value_end)
    return out


def decode_batch(records: Sequence[bytes], config: SpectrogramConfig,
                 keys: Sequence[str] = ALL_KEYS) -> dict[str, np.ndarray]:
    """Decodes serialized records into one dict of batched numpy arrays, as `parse_batch` does in
    TensorFlow: spectrograms `config.dtype` [B, frames, bins], metadata [B] (strings as str,
    ints int64, floats float32), `schema_version` [B]. Each record's schema version and shape are
    checked (ValueError naming the record's position in the batch)."""
    unknown = sorted(set(keys) - set(ALL_KEYS))
    if unknown:
        raise ValueError(f"decode_batch(): unknown feature keys {unknown}. Known: {list(ALL_KEYS)}")
    wanted = {k.encode("utf-8"): k for k in (*keys, "schema_version", "shape")}
    frames, bins = config.shape
    dtype = np.dtype(config.dtype).newbyteorder("<")
    n = len(records)
    out: dict[str, Any] = {k: np.empty((n, frames, bins), dtype) for k in keys if k in SPECTROGRAM_KEYS}
    meta: dict[str, list] = {k: [] for k in keys if k not in SPECTROGRAM_KEYS}
    versions = np.empty(n, np.int64)
    for b, record in enumerate(records):
        values = _features(bytes(record), wanted)
        version = (values.get("schema_version") or [None])[0]
        if version not in READ_SCHEMA_VERSIONS:
            check_schema_version(version, f"Record {b} of the batch")
        if tuple(values.get("shape", ())) != (frames, bins):
            raise ValueError(f"Record {b} of the batch holds spectrograms of shape {tuple(values.get('shape', ()))}, "
                             f"not the dataset's ({frames}, {bins}): dataset_info.json does not match the shards.")
        versions[b] = version
        for key, array in out.items():
            if key not in values:
                raise ValueError(f"Record {b} of the batch has no {key} feature")
            offset, length = values[key]
            if length != frames * bins * dtype.itemsize:
                raise ValueError(f"Record {b} of the batch: {key} holds {length} bytes, not {frames} x {bins} "
                                 f"{config.dtype} values")
            array[b] = np.frombuffer(record, dtype, frames * bins, offset).reshape(frames, bins)
        for key, column in meta.items():
            if key not in values and version == 2 and key in ADDED_IN_3:  # schema 3's keys, at their "none"
                column.append(ADDED_IN_3[key])
                continue
            value = values[key][0]
            column.append(value.decode("utf-8") if METADATA_FEATURES[key] == "bytes" else value)
    for key, column in meta.items():
        out[key] = np.asarray(column, _NUMPY_KIND[METADATA_FEATURES[key]])
    out["schema_version"] = versions
    return out


def model_io(batch: Mapping[str, np.ndarray], config: SpectrogramConfig, target: str = "noise",
             loss_weighting: str = "none", loss: str = "huber") -> tuple[np.ndarray, ...]:
    """(x, y) float32 [B, frames, bins, 1] of the U-Net family from decoded spectrograms (the
    magnitudes, and the phases for targets "psa" and "cmask"), as `trainer.input_pipeline.make_dataset`
    yields them (x has three channels for "cmask": `trainer.targets.model_features`); (x, y, weights [B, frames, bins]) with `loss_weighting="magnitude"`. The formulas are
    `trainer.targets`' numpy functions. With a waveform loss (`loss="snr"` or `"si-sdr"`), y is the
    packed noisy and clean spectra [B, frames, bins, 4] of `trainer.waveform_loss`, as tf.data's
    `waveform_model_io` makes them."""
    check_target(target)
    check_loss_weighting(loss_weighting)
    # float32 once here, not in each formula (float16 -> float32 is the costly numpy step).
    noisy, clean = (np.asarray(batch[k], np.float32) for k in ("noisy_magnitude", "clean_magnitude"))
    x = model_features(noisy, batch.get("noisy_phase"), target, config)
    if check_reader_loss(loss) != "huber":
        return x, packed_spectra(noisy, batch["noisy_phase"], clean, batch["clean_phase"])
    y = model_target(noisy, clean, target, config, batch.get("noisy_phase"), batch.get("clean_phase"))[..., np.newaxis]
    if loss_weighting == "magnitude":
        return x, y, loss_weight(noisy)
    return x, y


def check_reader_loss(loss: str) -> str:
    if loss not in ("huber", *WAVEFORM_LOSSES):
        raise ValueError(f"loss must be one of {('huber', *WAVEFORM_LOSSES)}. Received: loss={loss!r}")
    return loss


def model_keys(target: str, loss: str = "huber") -> tuple[str, ...]:
    """The spectrograms `model_io` needs for `target` and `loss` (the waveform losses need both phases)."""
    return target_spectrograms("psa" if check_reader_loss(loss) != "huber" else target)


def check_positive(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}")
    return value


def stream_runs(split: IndexedSplit, consumer: int, consumers: int, *, epoch: int, seed: int, shuffle: bool,
                run_length: int) -> list[tuple[int, int]]:
    """The runs of records (see `IndexedSplit.runs`) that consumer `consumer` of `consumers` reads in
    `epoch`: every run goes to exactly one consumer (round robin over the run order, shuffled by
    (seed, epoch) when `shuffle`), so together they read each record once."""
    runs = split.runs(run_length)
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(len(runs))
        runs = [runs[i] for i in order]
    return runs[consumer::consumers]


def stream_records(split: IndexedSplit, runs: Sequence[tuple[int, int]], *, shuffle: bool, shuffle_buffer: int,
                   rng: np.random.Generator, read_runs: Iterable[list[bytes]] | None = None) -> Iterator[bytes]:
    """Serialized records of `runs`, read one run per request; with `shuffle`, through a buffer of
    `shuffle_buffer` records from which a random one leaves as each new one enters (as tf.data's).
    `read_runs`: the runs' records already being read (e.g. ahead, on threads), in run order."""
    if read_runs is None:
        read_runs = (split.read_run(first, stop) for first, stop in runs)
    records = (record for run in read_runs for record in run)
    if not shuffle:
        return records
    return buffer_shuffle(records, shuffle_buffer, rng)


def stream_positions(runs: Sequence[tuple[int, int]], *, shuffle_buffer: int,
                     rng: np.random.Generator) -> Iterator[int]:
    """The positions of the records that `stream_records(shuffle=True)` yields, in the same order
    (the same buffer, fed with positions instead of records): the buffer then holds numbers, not
    `shuffle_buffer` records (270 MB for 2048 records of four 128 x 128 float16 spectrograms), and a
    record is read when it leaves the buffer. For local shards, where a read by offset costs no
    request."""
    return buffer_shuffle((i for first, stop in runs for i in range(first, stop)), shuffle_buffer, rng)


def buffer_shuffle(items: Iterable[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """`items` through a shuffle buffer of `size`: a random one leaves as each new one enters (as
    tf.data's `shuffle`), the rest leave shuffled at the end. The order depends on `rng` and the
    number of items only, not on what they are."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(len(buffer)))
        buffer[j], item = item, buffer[j]
        yield item
    rng.shuffle(buffer)
    yield from buffer
