"""BLSTM mask inference with bin embeddings: SCE+MI and DC+MI (Keras layers and ops only).

After Hetherly, Gamble, Barrios, Stephenson and Ni, "Deep Speech Denoising with Vector Space
Projections" (2018), whose network is:

    features   square root of the noisy magnitude, normalised per example (here per window:
               zero mean, unit variance over its frames and bins)
    BLSTM      `layers` bidirectional LSTMs of `units` units per direction (tanh), over the frames
    embedding  a linear dense layer per frame: [frames, bins * dim] -> an embedding of `dim`
               dimensions for every time-frequency bin
    MI head    the embeddings through a dense layer and a sigmoid: a ratio mask for the speech,
               trained against the clean magnitude (`mask_inference_loss`)

and one of two embedding losses:

    SCE (source-contrastive, the paper's): every source of the training set (each speaker, each
        noise class) has a learned vector; a bin is labelled +1 for the source loudest in it and -1
        for the other source of its mix; loss = -log sigmoid(label * <embedding, source vector>),
        summed over the two sources of the mix, averaged over bins (`sce_loss`)
    DC (deep clustering, Hershey et al. 2016, as in the paper's DC+MI comparison after Luo et al.
        2016): unit-length embeddings, ||V V^T - Y Y^T||_F^2 over the bins above a silence
        threshold, normalised by their count squared (`deep_clustering_loss`)

At inference the exported model has two heads: "mask" (the MI head, the default) and "kmeans"
(two-cluster k-means on the unit-length bin embeddings; the cluster whose bins the MI head finds
more speech-like is the speech: `KMeansMask`). Both give a mask in the predictor's [-1, 1] range.

Differences from the paper, and why: the dataset's 128 frames x 128 bins at 8 kHz (n_fft 255, hop
63: 1 s windows) instead of Hann 512 / stride 256 on 2 s clips at 16 kHz, so that every family
trains on the same shards and runs in the same predictor; the LSTMs always compute in float32
(cuDNN has no bfloat16 LSTM kernel on JAX), the rest follows the precision policy.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from tfrecord_schema.config import SpectrogramConfig

# Bins more than this far below the loudest bin of their example are left out of the DC loss
# (they carry no information about which source dominates; Hershey et al. 2016 do the same).
SILENCE_DB = 40.0
_EPS = 1e-8


@keras.saving.register_keras_serializable(package="speech_enhance")
class SqrtMagnitudeFeatures(layers.Layer):
    """The model input (scaled log magnitude, [B, frames, bins, 1]) -> the paper's features [B, frames, bins]:
    the square root of the magnitude, normalised to zero mean and unit variance per example."""

    def __init__(self, input_offset_db: float, input_scale_db: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not input_scale_db > 0:
            raise ValueError(f"input_scale_db must be positive. Received: input_scale_db={input_scale_db!r}")
        self.input_offset_db = float(input_offset_db)
        self.input_scale_db = float(input_scale_db)

    def call(self, x):
        x = ops.cast(ops.squeeze(x, -1), "float32")
        # sqrt(10 ** (db / 20)) = exp(db * ln(10) / 40)
        db = x * self.input_scale_db + self.input_offset_db
        root = ops.exp(db * (math.log(10.0) / 40.0))
        mean = ops.mean(root, axis=(1, 2), keepdims=True)
        std = ops.std(root, axis=(1, 2), keepdims=True)
        return (root - mean) / (std + 1e-5)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])

    def get_config(self):
        return {**super().get_config(), "input_offset_db": self.input_offset_db,
                "input_scale_db": self.input_scale_db}


@keras.saving.register_keras_serializable(package="speech_enhance")
class SourceLogits(layers.Layer):
    """<bin embedding, source vector> for the two sources of each example: ([B, T, F, D], [B, 2, D]) -> [B, T, F, 2]."""

    def call(self, inputs):
        embeddings, vectors = inputs
        return ops.einsum("btfd,bsd->btfs", ops.cast(embeddings, "float32"), ops.cast(vectors, "float32"))

    def compute_output_shape(self, input_shapes):
        return (*input_shapes[0][:-1], 2)


@keras.saving.register_keras_serializable(package="speech_enhance")
class KMeansMask(layers.Layer):
    """Binary speech mask from two-cluster k-means on unit-length bin embeddings, per example.

    Inputs: embeddings [B, T, F, D] and the MI head's mask [B, T, F, 1]. The two centroids start at
    the mask-weighted and (1 - mask)-weighted means of the embeddings, then `iterations` rounds of
    Lloyd's algorithm (squared Euclidean distance) move them; an emptied cluster keeps its centroid.
    The cluster whose bins have the higher mean MI mask is named speech. Output [B, T, F, 1] in {0, 1}.
    """

    def __init__(self, iterations: int = 10, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 1:
            raise ValueError(f"iterations must be a positive integer. Received: iterations={iterations!r}")
        self.iterations = iterations

    def call(self, inputs):
        embeddings, mask = inputs
        shape = ops.shape(mask)
        v = ops.cast(embeddings, "float32")
        v = v / (ops.sqrt(ops.sum(v * v, axis=-1, keepdims=True)) + _EPS)
        v = ops.reshape(v, (shape[0], -1, ops.shape(v)[-1]))  # [B, N, D]
        m = ops.reshape(ops.cast(mask, "float32"), (shape[0], -1))  # [B, N]

        def centroid(weights, previous):
            total = ops.sum(weights, axis=1, keepdims=True)  # [B, 1]
            mean = ops.einsum("bn,bnd->bd", weights, v) / (total + _EPS)
            return mean if previous is None else ops.where(total > 0, mean, previous)

        speech, noise = centroid(m, None), centroid(1.0 - m, None)
        assigned = m
        for _ in range(self.iterations):
            d_speech = ops.sum(ops.square(v - speech[:, None, :]), axis=-1)
            d_noise = ops.sum(ops.square(v - noise[:, None, :]), axis=-1)
            assigned = ops.cast(d_speech <= d_noise, "float32")
            speech, noise = centroid(assigned, speech), centroid(1.0 - assigned, noise)
        mean_in = ops.sum(assigned * m, axis=1, keepdims=True) / (ops.sum(assigned, axis=1, keepdims=True) + _EPS)
        mean_out = ops.sum((1.0 - assigned) * m, axis=1, keepdims=True) / (
            ops.sum(1.0 - assigned, axis=1, keepdims=True) + _EPS)
        binary = ops.where(mean_in >= mean_out, assigned, 1.0 - assigned)
        return ops.reshape(binary, shape)

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[1])

    def get_config(self):
        return {**super().get_config(), "iterations": self.iterations}


def _lstm(units: int, name: str) -> layers.Layer:
    # float32 whatever the policy: the cuDNN LSTM has no bfloat16 kernel (Keras 3 on JAX fails with
    # "Unknown output type"), and LSTM state is sensitive to low precision anyway.
    return layers.Bidirectional(layers.LSTM(units, return_sequences=True, dtype="float32", name=name),
                                dtype="float32", name=f"{name}_bidirectional")


def build_core(config: SpectrogramConfig, blstm_layers: int, blstm_units: int, embedding_dim: int,
               name: str = "blstm_core") -> keras.Model:
    """The shared network: model input [B, frames, bins, 1] -> (embeddings [B, frames, bins, D],
    mask [B, frames, bins, 1])."""
    for arg, value in (("blstm_layers", blstm_layers), ("blstm_units", blstm_units), ("embedding_dim", embedding_dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{arg} must be a positive integer. Received: {arg}={value!r}")
    frames, bins = config.shape
    inputs = keras.Input(shape=(frames, bins, 1), name="noisy_log_magnitude")
    x = SqrtMagnitudeFeatures(config.input_offset_db, config.input_scale_db, name="sqrt_magnitude")(inputs)
    for i in range(blstm_layers):
        x = _lstm(blstm_units, f"blstm{i + 1}")(x)
    x = layers.Dense(bins * embedding_dim, dtype="float32", name="embedding_dense")(x)
    embeddings = layers.Reshape((frames, bins, embedding_dim), dtype="float32", name="embeddings")(x)
    mask = layers.Dense(1, activation="sigmoid", dtype="float32", name="mask_inference")(embeddings)
    return keras.Model(inputs, [embeddings, mask], name=name)


def build_training_model(config: SpectrogramConfig, loss: str, *, blstm_layers: int, blstm_units: int,
                         embedding_dim: int, num_sources: int = 0) -> keras.Model:
    """The network with its training outputs {"mask": [B, T, F, 1], "embedding": ...}.

    loss "sce": inputs {"features": [B, T, F, 1], "sources": [B, 2] int32 (speech, noise source ids)};
    "embedding" is the logits [B, T, F, 2] of the bins against the two sources' learned vectors.
    loss "dc": input the features alone; "embedding" is the unit-length embeddings [B, T, F, D].
    """
    if loss not in ("sce", "dc"):
        raise ValueError(f"loss must be 'sce' or 'dc'. Received: loss={loss!r}")
    core = build_core(config, blstm_layers, blstm_units, embedding_dim)
    frames, bins = config.shape
    features = keras.Input(shape=(frames, bins, 1), name="features")
    embeddings, mask = core(features)
    mask = layers.Identity(name="mask", dtype="float32")(mask)
    if loss == "dc":
        unit = layers.UnitNormalization(axis=-1, name="embedding", dtype="float32")(embeddings)
        return keras.Model(features, {"mask": mask, "embedding": unit}, name="blstm_dc")
    if not isinstance(num_sources, int) or num_sources < 1:
        raise ValueError("The SCE loss needs the training set's sources (speakers and noise classes). "
                         f"Received: num_sources={num_sources!r}")
    sources = keras.Input(shape=(2,), dtype="int32", name="sources")
    vectors = layers.Embedding(num_sources, embedding_dim, dtype="float32", name="source_vectors")(sources)
    logits = SourceLogits(name="embedding", dtype="float32")([embeddings, vectors])
    return keras.Model({"features": features, "sources": sources}, {"mask": mask, "embedding": logits},
                       name="blstm_sce")


def inference_model(training_model: keras.Model, config: SpectrogramConfig, kmeans_iterations: int) -> keras.Model:
    """The exported model: [B, T, F, 1] -> [mask head, k-means head], each [B, T, F, 1] in [-1, 1]
    (the predictor's "mask" target: enhanced = noisy * (out + 1) / 2)."""
    core = training_model.get_layer("blstm_core")
    inputs = keras.Input(shape=(*config.shape, 1), name="noisy_log_magnitude")
    embeddings, mask = core(inputs)
    binary = KMeansMask(kmeans_iterations, name="kmeans")([embeddings, mask])
    to_range = {"offset": -1.0, "scale": 2.0, "dtype": "float32"}
    return keras.Model(inputs, [layers.Rescaling(name="mask_head", **to_range)(mask),
                                layers.Rescaling(name="kmeans_head", **to_range)(binary)], name="blstm")


# --- losses (keras.ops; each returns one value per example, [B]) ---------------------------------

def mask_inference_loss(y_true, mask):
    """y_true [B, T, F, 2]: noisy and clean magnitudes; mask [B, T, F, 1] in [0, 1].

    Mean squared error between the square roots of the masked noisy magnitude and of the clean
    magnitude (the paper's sqrt features), over the mean noisy magnitude of the example, so loud
    and quiet examples weigh alike.
    """
    y_true = ops.cast(y_true, "float32")
    noisy, clean = y_true[..., 0], y_true[..., 1]
    m = ops.cast(mask[..., 0], "float32")
    error = ops.square(ops.sqrt(m * noisy + _EPS) - ops.sqrt(clean + _EPS))
    return ops.mean(error, axis=(1, 2)) / (ops.mean(noisy, axis=(1, 2)) + _EPS)


def sce_loss(labels, logits):
    """Source-contrastive loss. labels [B, T, F, 2]: +1 where that source (speech, noise) is the loudest
    in the bin, -1 where the other is, 0 for a source without a learned vector (not in the
    training set); logits [B, T, F, 2]. Mean over bins of sum over sources of -log sigmoid(label * logit)."""
    labels = ops.cast(labels, "float32")
    logits = ops.cast(logits, "float32")
    per_bin = ops.sum(ops.abs(labels) * ops.softplus(-labels * logits), axis=-1)
    return ops.mean(per_bin, axis=(1, 2))


def deep_clustering_loss(y_true, embeddings):
    """Deep-clustering loss. y_true [B, T, F, 3]: one-hot dominant source (speech, noise) and a 0/1
    weight per bin; embeddings [B, T, F, D], unit length. ||V'V'^T - Y'Y'^T||_F^2 / (sum of weights)^2
    with V' and Y' the weighted rows, computed as ||V'^T V'||^2 - 2 ||V'^T Y'||^2 + ||Y'^T Y'||^2."""
    y_true = ops.cast(y_true, "float32")
    batch = ops.shape(y_true)[0]
    w = ops.reshape(y_true[..., 2], (batch, -1, 1))
    y = ops.reshape(y_true[..., :2], (batch, -1, 2)) * w
    v = ops.reshape(ops.cast(embeddings, "float32"), (batch, -1, ops.shape(embeddings)[-1])) * w
    vv = ops.sum(ops.square(ops.einsum("bnd,bne->bde", v, v)), axis=(1, 2))
    vy = ops.sum(ops.square(ops.einsum("bnd,bnk->bdk", v, y)), axis=(1, 2))
    yy = ops.sum(ops.square(ops.einsum("bnk,bnl->bkl", y, y)), axis=(1, 2))
    count = ops.sum(w, axis=(1, 2))
    return (vv - 2.0 * vy + yy) / (ops.square(count) + _EPS)


# --- training labels from the records (TensorFlow, for tf.data) -------------------------------------

def tf_dominant_speech(noisy_magnitude, noisy_phase, clean_magnitude, clean_phase):
    """1.0 where the speech is louder than the noise in a bin, else 0.0 ([B, T, F]); noise = noisy - clean
    on the complex spectrograms: |N|^2 = |X|^2 + |S|^2 - 2 |X| |S| cos(phase_X - phase_S)."""
    import tensorflow as tf

    x, s = tf.cast(noisy_magnitude, tf.float32), tf.cast(clean_magnitude, tf.float32)
    cos = tf.cos(tf.cast(noisy_phase, tf.float32) - tf.cast(clean_phase, tf.float32))
    noise_power = tf.maximum(x * x + s * s - 2.0 * x * s * cos, 0.0)
    return tf.cast(s * s > noise_power, tf.float32)


def tf_loud_bins(noisy_magnitude, silence_db: float = SILENCE_DB):
    """1.0 for bins within `silence_db` of the loudest bin of their example, else 0.0 ([B, T, F])."""
    import tensorflow as tf

    x = tf.cast(noisy_magnitude, tf.float32)
    peak = tf.reduce_max(x, axis=[1, 2], keepdims=True)
    return tf.cast(x > peak * 10.0 ** (-silence_db / 20.0), tf.float32)


# --- numpy references (tests, documentation) ----------------------------------------------------------

def numpy_sce_loss(labels: np.ndarray, embeddings: np.ndarray, source_vectors: np.ndarray,
                   source_ids: np.ndarray) -> np.ndarray:
    """The SCE loss written out with loops over examples, bins and sources: [B].

    labels [B, T, F, 2] in {-1, 0, 1}; embeddings [B, T, F, D]; source_vectors [S, D];
    source_ids [B, 2] (speech source, noise source)."""
    out = np.zeros(labels.shape[0])
    for b in range(labels.shape[0]):
        total = 0.0
        for t in range(labels.shape[1]):
            for f in range(labels.shape[2]):
                for s in range(2):
                    y = labels[b, t, f, s]
                    if y == 0:
                        continue
                    z = y * float(np.dot(embeddings[b, t, f], source_vectors[source_ids[b, s]]))
                    total += -math.log(1.0 / (1.0 + math.exp(-z)))
        out[b] = total / (labels.shape[1] * labels.shape[2])
    return out
