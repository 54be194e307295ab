"""`PredictOptions`: every option of `predict`, declared once (default, help, flag).

`beam_predict.run_predict` takes it; `speech-enhance predict` builds its flags from it and writes the
library's argument names as those flags in errors (`tfrecord_schema.options`). The defaults the
library falls back on (batch sizes, overlap, worker cap, high-band modes) live here too, so that the
help quotes the numbers the code uses. This module imports nothing heavy, so `speech-enhance --help`
stays fast.
"""

from __future__ import annotations

import dataclasses

from tfrecord_schema.options import option

# Windows per model call when none is given. On a CPU small batches are faster (the full U-Net on
# two AMD EPYC cores: 16.6 ms per window at 8, 19.9 at 32, 21.2 at 64; a batch of 8 keeps its
# activations in cache); an accelerator wants large ones.
CPU_BATCH_SIZE = 8
ACCELERATOR_BATCH_SIZE = 64
DEFAULT_OVERLAP = 0.5  # fraction of a window shared with the next
# Threads for the numpy and file work around the model (reading, resampling, STFT, inverse STFT,
# writing). numpy, scipy.fft, soxr and libsndfile release the GIL, so this work overlaps the
# model's and, on a machine with many cores, keeps a GPU fed.
MAX_DEFAULT_WORKERS = 16
DEFAULT_PROGRESS_INTERVAL = 5.0  # seconds between progress log lines
HIGH_BAND_MODES = ("keep", "drop")
OUTPUT_FORMATS = ("wav", "flac", "ogg")
CLUSTER_GROUP = "cluster"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PredictOptions:
    """Which files, which model, how they are denoised and written, and where (see `run_predict`)."""

    source: str = option(
        help="a folder (searched recursively) or one audio file; or a gs:// folder prefix (searched recursively) "
        "or object. Taken literally, never as a glob pattern", flag="--input", metavar="PATH")
    output_dir: str = option(
        help="folder (or gs:// prefix) for the denoised files; must not be the input folder", flag="--output",
        metavar="DIR")
    model_dir: str | None = option(
        None, "model directory (local or gs://) written by `speech-enhance train` (model.keras + model.json), or a "
        "model shipped in the package: shipped:8k or shipped:16k (for input at 16 kHz and above: it denoises up to "
        "8 kHz); default: shipped:16k when every input file is at 16 kHz or above, else shipped:8k",
        flag="--model", metavar="DIR")
    head: str | None = option(
        None, "the output to run, for a model with several (model.json \"heads\"; a BLSTM has \"mask\", the "
        "mask-inference head, and \"kmeans\", the clustering of its embeddings); default: the model's first head",
        metavar="NAME")
    batch_size: int | None = option(
        None, "model windows per batch; windows of several files share a batch",
        default_text=f"{CPU_BATCH_SIZE} on a CPU, {ACCELERATOR_BATCH_SIZE} on a GPU or TPU")
    overlap: float = option(
        DEFAULT_OVERLAP, "fraction of a window shared with the next, in [0, 1); windows are joined by weighted "
        "overlap-add")
    output_format: str | None = option(
        None, "output format; default: the input file's own format", flag="--format", choices=OUTPUT_FORMATS)
    keep_model_rate: bool = option(
        False, "write at the model's sample rate instead of resampling back to the input's rate (band-limited to "
        "the model's band, whatever --high-band says)")
    high_band: str = option(
        "keep", "for inputs above the model's rate, the band the model does not see (above 4 kHz for an 8 kHz "
        "model): 'keep' adds it back, attenuated as the model attenuates the top of its own band (frame by frame, "
        "never below -20 dB); 'drop' leaves it out, so the output is band-limited like the model's",
        choices=HIGH_BAND_MODES)
    downmix: bool = option(False, "average the channels and write mono, instead of denoising each channel")
    overwrite: bool = option(False, "redo files whose output already exists (default: skip them)", default_text="")
    workers: int | None = option(
        None, f"threads for reading, resampling, STFT and writing around the model (default: the number of CPU "
        f"cores, at most {MAX_DEFAULT_WORKERS}; 0: none); with --runner fnapi or dask (local cluster): worker "
        f"processes (default: the number of CPU cores)")
    file_processes: int = option(
        0, "worker processes for reading, resampling, STFT, overlap-add, inverse STFT and writing, while this "
        "process only batches the windows of all files and runs the model: for a GPU that threads cannot keep fed "
        "(try the number of CPU cores). --workers threads are then not used. Same outputs", metavar="N",
        default_text="0, threads in this process; see docs/predict.md")
    progress_interval: float = option(
        DEFAULT_PROGRESS_INTERVAL, "seconds between progress log lines, which also say how far into a long file "
        "the output is", metavar="SECONDS", default_text=f"{DEFAULT_PROGRESS_INTERVAL:g}")
    runner: str | None = option(
        None, "'fnapi': Beam's FnApiRunner on this machine, --workers processes (default: one per core); 'dask': "
        "Beam's DaskRunner on the cluster at --dask-address, or on a local cluster of --workers processes (pip install "
        "'speech-enhance[dask]'); or a Beam runner name such as DataflowRunner", metavar="NAME",
        group=CLUSTER_GROUP)
    dask_address: str | None = option(
        None, "with --runner dask: the scheduler of an existing dask.distributed cluster", metavar="tcp://HOST:PORT",
        group=CLUSTER_GROUP)
