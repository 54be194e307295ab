"""The systems an evaluation compares: the models, the reference's recipe, classical baselines, the oracle.

A `System` turns the items' noisy signals into estimates of the same length.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from predictor.evaluation import baselines
from predictor.evaluation.items import Item
from tfrecord_schema.config import SpectrogramConfig
from trainer.targets import COMPLEX_TARGETS

if TYPE_CHECKING:
    from predictor.evaluation.snmf import SparseNMF


@dataclasses.dataclass
class System:
    """A named denoiser: `run(items)` returns one estimate per item (same length as item.noisy)."""

    name: str
    run: Callable[[Sequence[Item]], list[np.ndarray]]
    description: str = ""


def _per_item(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[Sequence[Item]], list[np.ndarray]]:
    return lambda items: [fn(item.noisy) for item in items]


def model_systems(name: str, model_dir: str, *, batch_size: int | None = None, overlap: float = 0.5,
                  reference_recipe: bool = True) -> tuple[list[System], SpectrogramConfig]:
    """Our model (overlap-add predictor) and, optionally, the reference's recipe on the same weights;
    a streaming model (or its ONNX export, `predictor.stream_models`) on its own.

    A model with several heads (model.json "heads") gives one system per head: NAME for the
    default head, NAME-HEAD for each other one (e.g. a BLSTM's "NAME-kmeans").
    """
    from predictor.enhance import Enhancer, load_enhancer, resolve_model_dir
    from predictor.stream_models import StreamingEnhancer
    from trainer.model_dir import read_model_info

    model_dir = resolve_model_dir(model_dir)  # a shipped model's name ("shipped:16k") to its directory
    enhancer = load_enhancer(model_dir, batch_size=batch_size, overlap=overlap)
    if isinstance(enhancer, StreamingEnhancer):  # one output, no windows: the reference recipe does not apply
        def run_stream(items: Sequence[Item]) -> list[np.ndarray]:
            return [y for _, y in enhancer.enhance_many((i, item.noisy) for i, item in enumerate(items))]

        return [System(name, run_stream, enhancer.description)], enhancer.config
    heads = read_model_info(model_dir).get("heads") or [None]
    systems = []
    enhancers = []
    for head in heads:
        enhancer = Enhancer.from_model_dir(model_dir, head=head, batch_size=batch_size, overlap=overlap)
        enhancers.append(enhancer)

        def run(items: Sequence[Item], enhancer=enhancer) -> list[np.ndarray]:
            return [y for _, y in enhancer.enhance_many((i, item.noisy) for i, item in enumerate(items))]

        label = f" ({head} head)" if head else ""
        systems.append(System(name if head == heads[0] else f"{name}-{head}", run,
                              f"{model_dir}{label}: {enhancer.target} target, {100 * overlap:.0f}% overlap-add"))
    enhancer = enhancers[0]  # the default head; the reference recipe runs it
    if reference_recipe and enhancer.target not in COMPLEX_TARGETS:  # the recipe has no phase input
        recipe = baselines.ReferenceRecipe(enhancer.predict, enhancer.config, enhancer.target,
                                           batch_size=enhancer.batch_size)
        systems.append(System(f"{name}-reference-recipe", lambda items: recipe.enhance_many([i.noisy for i in items]),
                              f"{model_dir} run as the reference did: per-window peak normalisation, "
                              "non-overlapping windows, tail dropped, output x10"))
    return systems, enhancer.config


def baseline_systems(config: SpectrogramConfig) -> list[System]:
    """noisy input, spectral subtraction, Wiener filter, noisereduce (both modes) and the oracle."""
    rate = config.sample_rate
    return [
        System("noisy", lambda items: [item.noisy for item in items], "the unprocessed mixture"),
        System("spectral-subtraction", _per_item(lambda x: baselines.spectral_subtraction(x, config)),
               "power spectral subtraction, minimum-statistics noise estimate"),
        System("wiener", _per_item(lambda x: baselines.wiener_filter(x, config)),
               "decision-directed Wiener filter, minimum-statistics noise estimate"),
        System("noisereduce-stationary", _per_item(lambda x: baselines.spectral_gating(x, rate, stationary=True)),
               "noisereduce.reduce_noise(stationary=True)"),
        System("noisereduce-nonstationary", _per_item(lambda x: baselines.spectral_gating(x, rate, stationary=False)),
               "noisereduce.reduce_noise(stationary=False)"),
        System("oracle", lambda items: [baselines.oracle(item.noisy, item.clean, config) for item in items],
               "clean magnitude with the noisy phase (ceiling of magnitude-only models)"),
    ]


def snmf_system(model: SparseNMF, name: str = "snmf") -> System:
    """The sparse-NMF baseline (`predictor.evaluation.snmf.SparseNMF`, fitted or loaded) as a System named `name`.

    Each item's noisy signal is enhanced on its own with the model's dictionaries; the description
    gives the atoms, sparsity, beta and mask power.
    """
    if not model.fitted:
        raise ValueError("model must hold dictionaries (fit(), from_folders(), from_dataset() or load() it first). "
                         f"Received: model={model!r} without dictionaries")
    return System(name, _per_item(model.enhance), model.describe())


def peer_systems(names: Sequence[str], sample_rate: int) -> list[System]:
    """Learned peers (`predictor.evaluation.peers`: "deepfilternet3", "rnnoise", or "all") as Systems at `sample_rate` Hz.

    Each runs at its own rate (48 or 16 kHz) on every item's noisy signal, resampled up and back, with a fresh state per
    item and its delay compensated; the description names the package version and model. Needs the
    optional extra: pip install 'speech-enhance[peers]'.
    """
    from predictor.evaluation import peers

    systems = []
    for name in peers.peer_names(list(names)):
        peer = peers.load_peer(name)
        systems.append(System(name, _per_item(lambda x, peer=peer: peer.enhance(x, sample_rate)), peer.description))
    return systems
