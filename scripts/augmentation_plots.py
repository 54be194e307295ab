"""Spectrograms of one example without and with each augmentation: docs/images/augment_<kind>.png.

The audio is made on the spot (the demo corpus's synthetic speech and noises, a synthetic recorded
room response) and drawn by the mixing rule itself (`mixing.draw.draw_example`), so each plot shows
what the dataset job writes: the same example (seed, split, index) with the kind off and on.

    python scripts/augmentation_plots.py [--output docs/images]
"""

from __future__ import annotations

import argparse
import io
import os

import numpy as np

from beam_pipelines import synthetic
from mixing.draw import Source, SplitSources, draw_example
from mixing.options import AugmentOptions, MixOptions

RATE = 16000
WINDOW = 2 * RATE  # two seconds, enough to see reverberation tails and syllables
# kind -> (options that turn it on, what the plot shows, title[, the options of the left panel])
KINDS = {
    "reverb": (dict(reverb_probability=1.0, room_count=8), "mixture", "simulated room"),
    "recorded_rir": (dict(reverb_probability=1.0, rir_source="files"), "mixture", "recorded room response"),
    "dry_target": (dict(reverb_probability=1.0, rir_source="files", reverb_target="dry"), "clean", "dry target",
                   dict(reverb_probability=1.0, rir_source="files")),
    "babble": (dict(babble_probability=1.0, babble_talkers=(3, 3)), "mixture", "babble, 3 talkers"),
    "speed": (dict(speed_probability=1.0, speed_range=(1.1, 1.1)), "mixture", "speed x1.1"),
    "noise_tilt": (dict(noise_tilt_db=6.0), "mixture", "noise tilt"),
    "noise_lowpass": (dict(noise_lowpass_probability=1.0, noise_lowpass_hz=(1500.0, 1500.0)), "mixture",
                      "noise low-pass 1.5 kHz"),
    "several_noises": (dict(several_noises_probability=1.0, several_noises_count=(3, 3)), "mixture",
                       "three noises"),
    "clip": (dict(clip_probability=1.0, clip_level_db=(-12.0, -12.0)), "mixture", "clipped 12 dB below the peak"),
    "telephone": (dict(telephone_probability=1.0), "mixture", "telephone band 300-3400 Hz"),
    "codec": (dict(telephone_probability=1.0, telephone_codec="ulaw"), "mixture", "telephone band + mu-law"),
    "gain": (dict(gain_probability=1.0, gain_range_db=(-12.0, -12.0)), "mixture", "gain -12 dB"),
    "mixture_tilt": (dict(mixture_tilt_probability=1.0, mixture_tilt_db=6.0), "mixture", "mixture tilt"),
}


class Audio(dict):
    def get(self, key: str) -> np.ndarray:
        return self[key]


def corpus() -> tuple[SplitSources, Audio]:
    """Four synthetic speakers, three noises and one recorded-like room response (RT60 about 0.6 s)."""
    rng = np.random.default_rng(7)
    audio, sources = Audio(), []
    for i, f0 in enumerate((110.0, 150.0, 190.0, 230.0)):
        audio[f"v{i}"] = synthetic.speech(rng, 4 * RATE, RATE, f0).astype(np.float32)
        sources.append(Source("voice", f"voices/{i}.flac", f"speaker{i}", "train", 4 * RATE, f"v{i}"))
    for i, kind in enumerate(("vacuum", "traffic", "alarm")):
        noise = synthetic.noise(rng, 3 * RATE, RATE, kind)
        audio[f"n{i}"] = (0.3 * noise / np.max(np.abs(noise))).astype(np.float32)
        sources.append(Source("noise", f"noises/{kind}.wav", kind, "train", 3 * RATE, f"n{i}"))
    t = np.arange(RATE) / RATE
    rir = 0.2 * rng.standard_normal(RATE) * 10 ** (-3 * t / 0.6)
    rir[:100], rir[100] = 0.0, 1.0
    audio["r0"] = rir.astype(np.float32)
    sources.append(Source("rir", "rooms/hall.wav", "room", "train", RATE, "r0"))
    return SplitSources(sources, "train", WINDOW), audio


def _panel(axis, signal: np.ndarray, title: str, top: float) -> None:
    """One spectrogram, in dB from `top` - 80 to `top` (the louder panel's maximum, so both share a scale)."""
    from scipy.signal import spectrogram

    freqs, times, power = spectrogram(signal.astype(np.float64), RATE, nperseg=512, noverlap=384)
    level = 10 * np.log10(power + 1e-20)
    axis.pcolormesh(times, freqs / 1000, level, vmin=top - 80, vmax=top, shading="auto", cmap="magma")
    axis.set_title(title, fontsize=9)
    axis.set_xlabel("s")


def _max_db(signal: np.ndarray) -> float:
    from scipy.signal import spectrogram

    return float(10 * np.log10(np.max(spectrogram(signal.astype(np.float64), RATE, nperseg=512, noverlap=384)[2])))


def plot(kind: str, sources: SplitSources, audio: Audio, output: str, index: int = 1) -> str:
    """Writes output/augment_<kind>.png: the example's mixture (or target) off and on (or under the
    kind's left-panel options); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    options, shown, title, *left = KINDS[kind]
    left_options = AugmentOptions(**left[0]) if left else AugmentOptions()
    mix = MixOptions(seed=1, level_range=None, snr_range_db=(10.0, 10.0), loudness_range_dbfs=(-25.0, -25.0))
    before = draw_example("train", index, sources, audio, mix, RATE, WINDOW, left_options)
    after = draw_example("train", index, sources, audio, mix, RATE, WINDOW, AugmentOptions(**options))
    figure, axes = plt.subplots(1, 2, figsize=(8, 2.6), sharey=True)
    top = max(_max_db(getattr(before, shown)), _max_db(getattr(after, shown)))
    _panel(axes[0], getattr(before, shown), f"{shown}, " + ("early-reflection target" if left else "without"), top)
    _panel(axes[1], getattr(after, shown), f"{shown}, {title}", top)
    axes[0].set_ylabel("kHz")
    figure.tight_layout()
    path = os.path.join(output, f"augment_{kind}.png")
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=64)
    plt.close(figure)
    # 64 colours hold the colour map's steps and the text; the files are a quarter of the size.
    from PIL import Image

    Image.open(buffer).convert("RGB").quantize(colors=64).save(path, optimize=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "..", "docs", "images"),
                        help="folder for the PNG files (default: docs/images)")
    args = parser.parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    sources, audio = corpus()
    for kind in KINDS:
        print(plot(kind, sources, audio, args.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
