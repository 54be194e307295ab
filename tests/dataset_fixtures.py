"""Small audio folders for the dataset tests, made in tmp_path from `beam_pipelines.synthetic` audio."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from typing import Callable, Iterator

import numpy as np
import soundfile

from beam_pipelines import synthetic

NOISE_KINDS = ("clock", "alarm", "vacuum", "traffic")


def make_corpus(root, speakers: int = 6, utterances: int = 2, noises_per_kind: int = 2, seed: int = 7):
    """LibriSpeech-style voices (mixed rates, one stereo file) and noises with a classes.tsv."""
    rng = np.random.default_rng(seed)
    voice_dir, noise_dir = os.path.join(root, "voices"), os.path.join(root, "noises")
    for s in range(speakers):
        speaker = 200 + s
        folder = os.path.join(voice_dir, str(speaker), "1")
        os.makedirs(folder)
        for u in range(utterances):
            rate = (16000, 8000, 22050)[(s + u) % 3]
            audio = synthetic.speech(rng, int(rng.uniform(1.6, 2.5) * rate), rate, f0=rng.uniform(100, 220))
            if s == 0 and u == 0:
                audio = np.stack([audio, audio * 0.5], axis=1)
            fmt = ".flac" if u % 2 == 0 else ".wav"
            soundfile.write(os.path.join(folder, f"{speaker}-1-{u:04d}{fmt}"), audio, rate)
    os.makedirs(noise_dir)
    rows = ["file\tclass"]
    for kind in NOISE_KINDS:
        for i in range(noises_per_kind):
            audio = synthetic.noise(rng, int(rng.uniform(1.5, 3.0) * 16000), 16000, kind).astype(np.float32)
            name = f"{kind}{i}.ogg" if i == 1 else f"{kind}{i}.wav"
            soundfile.write(os.path.join(noise_dir, name), 0.5 * audio / np.max(np.abs(audio)), 16000)
            rows.append(f"{name}\t{kind}")
    with open(os.path.join(noise_dir, "classes.tsv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    return voice_dir, noise_dir


def add_bad_inputs(voice_dir: str, noise_dir: str) -> dict[str, tuple[str, str]]:
    """One bad file of each kind; returns {relative file: (role, expected reason)}."""
    bad = {}
    os.makedirs(os.path.join(voice_dir, "bad"), exist_ok=True)
    with open(os.path.join(voice_dir, "bad", "200-9-0000.flac"), "wb") as f:
        f.write(b"fLaC this is not really flac data" * 10)
    bad["bad/200-9-0000.flac"] = ("voice", "unreadable")
    open(os.path.join(voice_dir, "bad", "201-9-0000.wav"), "wb").close()
    bad["bad/201-9-0000.wav"] = ("voice", "empty")
    soundfile.write(os.path.join(voice_dir, "bad", "202-9-0000.wav"), np.full(4000, 0.1, np.float32) *
                    np.sin(np.arange(4000) / 5), 8000)
    bad["bad/202-9-0000.wav"] = ("voice", "too_short")
    soundfile.write(os.path.join(voice_dir, "bad", "203-9-0000.wav"), np.zeros(20000, np.float32), 8000)
    bad["bad/203-9-0000.wav"] = ("voice", "silent")
    poisoned = np.full(20000, 0.1, np.float32)
    poisoned[500] = np.nan
    soundfile.write(os.path.join(voice_dir, "bad", "204-9-0000.wav"), poisoned, 8000, subtype="FLOAT")
    bad["bad/204-9-0000.wav"] = ("voice", "not_finite")
    soundfile.write(os.path.join(noise_dir, "hush.wav"), np.zeros(16000, np.float32), 16000)
    bad["hush.wav"] = ("noise", "silent")
    soundfile.write(os.path.join(noise_dir, "blip.wav"), np.ones(400, np.float32) * 0.3, 16000)
    bad["blip.wav"] = ("noise", "too_short")
    with open(os.path.join(noise_dir, "broken.wav"), "wb") as f:
        f.write(b"RIFF\x00\x00\x00\x00WAVEjunk")
    bad["broken.wav"] = ("noise", "unreadable")
    return bad


def read_tree(folder) -> dict[str, bytes]:
    """{path relative to `folder`: bytes} of every file below it."""
    out = {}
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def kill_build_when(cmd: list[str], ready: Callable[[], bool], timeout_s: float = 120.0) -> None:
    """Runs `cmd` (a dataset build) in its own process group and SIGKILLs the group as soon as
    `ready()` holds; fails the test if the build ends first."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + timeout_s
        while time.time() < deadline and proc.poll() is None and not ready():
            time.sleep(0.02)
        assert proc.poll() is None, f"the build ended before it could be killed: {proc.stderr.read()[-2000:]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def small_filesystem(folder, size: str = "256k") -> Iterator[bool]:
    """Mounts a tmpfs of `size` on `folder` (created) for the block: a real full disk. Yields False,
    mounting nothing, where mounting is not allowed (not root): the caller then injects the error."""
    os.makedirs(folder, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)
