"""Process-wide tuning of glibc's allocator for the spectrogram-sized arrays of the STFT stages."""

from __future__ import annotations


def tune_malloc() -> None:
    """Keeps glibc from returning every freed 128 KB array to the kernel.

    Spectrogram arrays (128 x 128 float32 and up) are the size at which glibc serves allocations
    with mmap, so every numpy temporary costs page faults: several times slower numpy arithmetic.
    Raising the mmap and trim thresholds keeps those blocks in the heap. Process-wide; no-op where
    glibc is not the allocator.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass
