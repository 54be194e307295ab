"""Speech quality metrics: SI-SDR (numpy), PESQ (`pesq` package) and STOI (`pystoi`).

All functions take 1-D float signals of equal length: the clean reference first, the estimate second.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Callable

import numpy as np

logger = logging.getLogger(__name__)

# PESQ is defined at 8 kHz (narrow-band, P.862) and 16 kHz (wide-band, P.862.2) only.
PESQ_MODES = {8000: "nb", 16000: "wb"}
_EPS = 1e-12


def _pair(reference: np.ndarray, estimate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(reference, np.float64)
    e = np.asarray(estimate, np.float64)
    if s.ndim != 1 or s.shape != e.shape:
        raise ValueError("metrics take two 1-D signals of the same length. "
                         f"Received: reference shape={s.shape}, estimate shape={e.shape}")
    return s, e


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al., 2019).

    Both signals are made zero-mean; the reference is scaled by the least-squares factor
    alpha = <estimate, reference> / ||reference||^2 and SI-SDR = 10 log10(||alpha s||^2 / ||alpha s - e||^2).
    Returns nan for a silent reference.
    """
    s, e = _pair(reference, estimate)
    s = s - s.mean()
    e = e - e.mean()
    energy = np.dot(s, s)
    if energy <= _EPS:
        return float("nan")
    target = (np.dot(e, s) / energy) * s
    residual = e - target
    return float(10.0 * np.log10((np.dot(target, target) + _EPS) / (np.dot(residual, residual) + _EPS)))


def si_sdr_improvement(reference: np.ndarray, estimate: np.ndarray, mixture: np.ndarray) -> float:
    """SI-SDR of `estimate` minus SI-SDR of the unprocessed `mixture`, in dB."""
    return si_sdr(reference, estimate) - si_sdr(reference, mixture)


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Plain SNR in dB: 10 log10(sum s^2 / sum (e - s)^2), not scale-invariant."""
    s, e = _pair(reference, estimate)
    return float(10.0 * np.log10((np.dot(s, s) + _EPS) / (np.dot(e - s, e - s) + _EPS)))


def pesq_mode(sample_rate: int) -> str:
    """"nb" at 8 kHz, "wb" at 16 kHz; other rates are refused (resample first)."""
    if sample_rate not in PESQ_MODES:
        raise ValueError(f"PESQ is defined at 8000 Hz (narrow-band) and 16000 Hz (wide-band) only. "
                         f"Received: sample_rate={sample_rate}. Resample the signals first.")
    return PESQ_MODES[sample_rate]


def pesq_score(reference: np.ndarray, estimate: np.ndarray, sample_rate: int, mode: str | None = None) -> float:
    """PESQ MOS-LQO (ITU-T P.862 'nb' ~1.0-4.5, P.862.2 'wb' ~1.0-4.64).

    `mode` defaults to 'nb' at 8 kHz and 'wb' at 16 kHz. Returns nan (with a debug log) when PESQ
    cannot score the pair, e.g. when it finds no speech in the reference.
    """
    from pesq import PesqError, pesq

    s, e = _pair(reference, estimate)
    mode = mode or pesq_mode(sample_rate)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # pesq divides by the peak: 0/0 on silence
            return float(pesq(sample_rate, s.astype(np.float32), e.astype(np.float32), mode))
    except PesqError as err:  # NoUtterancesError, BufferTooShortError, ...
        logger.debug("PESQ failed: %s", err)
        return float("nan")


def stoi_score(reference: np.ndarray, estimate: np.ndarray, sample_rate: int, extended: bool = False) -> float:
    """Short-time objective intelligibility (Taal et al., 2011), 0..1 (`extended`: ESTOI).

    Returns nan (with a debug log) when the reference holds fewer than 30 frames of speech once its
    silent frames are dropped: pystoi then warns and returns 1e-5, a number that would look like a
    score and pull every mean down.
    """
    from pystoi import stoi

    s, e = _pair(reference, estimate)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(stoi(s, e, sample_rate, extended=extended))
    too_short = [w for w in caught if "Not enough STFT frames" in str(w.message)]
    if too_short:
        logger.debug("STOI not computed: %s", too_short[0].message)
        return float("nan")
    return value


def score(reference: np.ndarray, estimate: np.ndarray, mixture: np.ndarray, sample_rate: int,
          *, with_pesq: bool = True, with_stoi: bool = True, errors: dict[str, str] | None = None) -> dict[str, float]:
    """All metrics of one estimate: si_sdr, si_sdri (dB), pesq, stoi (nan where not computed).

    A metric that raises is re-raised, unless a dict is passed as `errors`: the metric is then nan
    and "ExceptionType: message" is stored in `errors` under its name, so that one pair the PESQ
    library cannot handle (e.g. a silent estimate) costs one number instead of a whole evaluation.
    """
    def attempt(name: str, compute: Callable[[], float]) -> float:
        if errors is None:
            return compute()
        try:
            return compute()
        except Exception as err:  # noqa: BLE001  (any failure of a metric library; see the docstring)
            errors[name] = f"{type(err).__name__}: {err}"
            return math.nan

    value = attempt("si_sdr", lambda: si_sdr(reference, estimate))
    out = {"si_sdr": value, "si_sdri": value - attempt("si_sdri", lambda: si_sdr(reference, mixture)),
           "pesq": math.nan, "stoi": math.nan}
    if with_pesq:
        out["pesq"] = attempt("pesq", lambda: pesq_score(reference, estimate, sample_rate))
    if with_stoi:
        out["stoi"] = attempt("stoi", lambda: stoi_score(reference, estimate, sample_rate))
    return out
