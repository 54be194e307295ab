"""The model families the trainer offers, each with what training and export need to know about it.

    family = get_family("blstm-sce")
    model = family.build_training_model(spectrogram, config, info)
    model.compile(optimizer, **family.compile_args(config, spectrogram))
    dataset = input_pipeline.make_dataset(..., keys=family.record_keys(config), model_io=family.model_io(spectrogram, config, info))
    exported = family.inference_model(model, spectrogram, config)   # what the predictor runs

Every exported model maps the predictor's input, the scaled log magnitude [B, frames, bins, 1]
(`trainer.targets.model_input`), to outputs in [-1, 1] of one `target` ("noise" or "mask"; the
U-Net's complex mask, "cmask", takes and gives three channels: `trainer.targets.model_features`),
so the predictor runs every family the same way. A family with several outputs names them `heads`
(model.json "heads", the first the default); the predictor picks one (`--head`).

    unet              the reference U-Net (trainer/model.py): noise, mask or psa target; Huber loss on the
                      target, or an SNR or SI-SDR loss on the waveform (trainer/waveform_loss.py)
    blstm-sce         4 x 500 BLSTM, bin embeddings, source-contrastive loss + mask inference
                      (trainer/blstm.py); heads "mask" and "kmeans"
    blstm-dc          the same network with the deep-clustering loss (DC+MI)
    mel-autoencoder   the 74,497-parameter mel CNN autoencoder, binary cross-entropy on scaled mels
                      (trainer/mel_autoencoder.py); its mel output becomes a linear mask
    stream-crn        the streaming CRN (trainer/streaming_crn.py, trainer/stream_family.py): 32 ms
                      frames, causal, explicit state; trained on the waveform, exported as its core,
                      which the predictor runs frame by frame (model.json "streaming")
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import keras

from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.dataset_info import DatasetInfo
from tfrecord_schema.stream_stft import StreamSettings
from trainer import blstm, mel_autoencoder, stream_family
from trainer.config import TrainConfig
from trainer.model import build_unet
from trainer.targets import tf_model_input
from trainer.streaming_crn import StreamingCrn
from trainer.waveform_loss import CAP_DB, MIX_WEIGHT, WAVEFORM_LOSSES, tf_packed_spectra, waveform_loss, waveform_metric

_MAGNITUDES = ("noisy_magnitude", "clean_magnitude")


def source_vocabulary(info: DatasetInfo | Mapping[str, Any], split: str = "train") -> list[str]:
    """The sources the SCE loss learns a vector for: "speaker:ID" for every speaker and "noise:CLASS"
    for every noise class of `split` in dataset_info.json's sources (`info`: a DatasetInfo or the
    file's dict), sorted within each kind."""
    sources = (info.sources if isinstance(info, DatasetInfo) else info.get("sources")) or {}
    speakers = sorted({v["speaker_id"] for v in sources.get("voices", []) if v.get("split") == split})
    classes = sorted({n["noise_class"] for n in sources.get("noises", []) if n.get("split") == split})
    if not speakers or not classes:
        raise ValueError(
            f"The SCE loss needs the speakers and noise classes of the {split!r} split, listed in dataset_info.json "
            f"under 'sources'; this dataset lists {len(speakers)} speakers and {len(classes)} noise classes there. "
            "Rebuild the dataset with this toolkit, or use --architecture blstm-dc, which needs no labels.")
    return [f"speaker:{s}" for s in speakers] + [f"noise:{c}" for c in classes]


class Family:
    """One model family. Subclasses set `name`, `keys` (record features the training pipeline parses),
    `heads` and `monitor` (the log key whose validation value picks the best epoch), and implement
    the methods below."""

    name = ""
    keys: tuple[str, ...] = _MAGNITUDES
    heads: tuple[str, ...] = ()
    monitor = "loss"
    optimizer_args: dict[str, Any] = {}

    def target(self, config: TrainConfig) -> str:
        return "mask"

    def record_keys(self, config: TrainConfig) -> tuple[str, ...]:
        """The record features the training pipeline parses for this configuration."""
        return self.keys

    def build_training_model(self, spectrogram: SpectrogramConfig, config: TrainConfig,
                             info: DatasetInfo | None = None) -> keras.Model:
        raise NotImplementedError

    def compile_args(self, config: TrainConfig, spectrogram: SpectrogramConfig) -> dict[str, Any]:
        raise NotImplementedError

    def model_io(self, spectrogram: SpectrogramConfig, config: TrainConfig, info: DatasetInfo) -> Callable:
        """A TensorFlow function: a dict of parsed batch tensors -> (x, y) or (x, y, sample weights)."""
        raise NotImplementedError

    def inference_model(self, training_model: keras.Model, spectrogram: SpectrogramConfig,
                        config: TrainConfig) -> keras.Model:
        return training_model

    def streaming(self, model: keras.Model, spectrogram: SpectrogramConfig, config: TrainConfig) -> dict[str, Any] | None:
        """model.json's "streaming" entry for a model the predictor runs frame by frame; None for one
        it runs on windows."""
        return None

    def describe(self, config: TrainConfig) -> str:
        return self.name

    def loss_description(self, config: TrainConfig) -> str:
        raise NotImplementedError


class UNetFamily(Family):
    name = "unet"

    def target(self, config):
        return config.target

    def record_keys(self, config):
        from trainer.input_pipeline import WAVEFORM_KEYS, target_keys

        return WAVEFORM_KEYS if config.loss in WAVEFORM_LOSSES else target_keys(config.target)

    def build_training_model(self, spectrogram, config, info=None):
        return build_unet(spectrogram, config.base_filters, config.depth, config.dropout, config.negative_slope,
                          target=config.target)

    def compile_args(self, config, spectrogram):
        if config.loss in WAVEFORM_LOSSES:
            # A waveform measure the loss is not is logged beside it (val_si_sdr with --loss snr).
            other = {"snr": "si-sdr", "si-sdr": "snr", "si-sdr+huber": "si-sdr"}[config.loss]
            return {"loss": waveform_loss(config.loss, spectrogram),
                    "metrics": [waveform_metric(other, spectrogram)]}
        return {"loss": keras.losses.Huber(delta=config.huber_delta),
                "metrics": [keras.metrics.MeanAbsoluteError(name="mae")]}

    def model_io(self, spectrogram, config, info):
        from trainer.input_pipeline import target_model_io, waveform_model_io

        if config.loss in WAVEFORM_LOSSES:
            return waveform_model_io(spectrogram, config.target)
        return target_model_io(spectrogram, config.target, config.loss_weighting)

    def describe(self, config):
        return f"U-Net ({config.target} target)"

    def loss_description(self, config):
        if config.loss == "si-sdr+huber":
            return (f"{MIX_WEIGHT:g} x negative si-sdr of the waveform (gain x noisy spectrum, inverse STFT in the "
                    f"graph, per example, capped at {CAP_DB:g} dB) + huber(delta=1) on the mask target, weighted by "
                    "the noisy magnitude")
        if config.loss in WAVEFORM_LOSSES:
            return (f"negative {config.loss} of the waveform (gain x noisy spectrum, inverse STFT in the graph), "
                    f"per example, capped at {CAP_DB:g} dB")
        weighting = ", weighted by the noisy magnitude" if config.loss_weighting == "magnitude" else ""
        return f"huber(delta={config.huber_delta}){weighting}"


class BlstmFamily(Family):
    """SCE+MI ("sce") or DC+MI ("dc"): trainer/blstm.py."""

    keys = ("noisy_magnitude", "noisy_phase", "clean_magnitude", "clean_phase", "speaker_id", "noise_class")
    heads = ("mask", "kmeans")
    monitor = "mask_loss"  # the validation speakers have no learned vector: the MI loss picks the epoch
    optimizer_args = {"global_clipnorm": 5.0}  # the usual guard against exploding LSTM gradients

    def __init__(self, name: str, loss: str) -> None:
        self.name, self.loss = name, loss

    def build_training_model(self, spectrogram, config, info=None):
        num_sources = len(source_vocabulary(info)) if self.loss == "sce" else 0
        return blstm.build_training_model(spectrogram, self.loss, blstm_layers=config.blstm_layers,
                                          blstm_units=config.blstm_units, embedding_dim=config.embedding_dim,
                                          num_sources=num_sources)

    def compile_args(self, config, spectrogram):
        embedding_loss = blstm.sce_loss if self.loss == "sce" else blstm.deep_clustering_loss
        return {"loss": {"mask": blstm.mask_inference_loss, "embedding": embedding_loss},
                "loss_weights": {"mask": 1.0, "embedding": float(config.embedding_weight)}}

    def model_io(self, spectrogram, config, info):
        import tensorflow as tf

        table = None
        if self.loss == "sce":
            vocabulary = source_vocabulary(info)
            table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(tf.constant(vocabulary), tf.range(len(vocabulary), dtype=tf.int64)),
                default_value=-1)

        def to_model_io(batch):
            noisy, clean = tf.cast(batch["noisy_magnitude"], tf.float32), tf.cast(batch["clean_magnitude"], tf.float32)
            x = tf.ensure_shape(tf_model_input(noisy, spectrogram)[..., tf.newaxis], [None, *spectrogram.shape, 1])
            speech = blstm.tf_dominant_speech(noisy, batch["noisy_phase"], clean, batch["clean_phase"])
            y_mask = tf.stack([noisy, clean], axis=-1)
            if self.loss == "dc":
                y_embedding = tf.stack([speech, 1.0 - speech, blstm.tf_loud_bins(noisy)], axis=-1)
                return x, {"mask": y_mask, "embedding": y_embedding}
            ids = tf.stack([table.lookup(tf.strings.join(["speaker:", batch["speaker_id"]])),
                            table.lookup(tf.strings.join(["noise:", batch["noise_class"]]))], axis=-1)  # [B, 2]
            known = tf.cast(ids >= 0, tf.float32)[:, None, None, :]  # a source without a vector: label 0
            signs = tf.stack([2.0 * speech - 1.0, 1.0 - 2.0 * speech], axis=-1) * known
            features = {"features": x, "sources": tf.cast(tf.maximum(ids, 0), tf.int32)}
            return features, {"mask": y_mask, "embedding": signs}

        return to_model_io

    def inference_model(self, training_model, spectrogram, config):
        return blstm.inference_model(training_model, spectrogram, config.kmeans_iterations)

    def describe(self, config):
        kind = "SCE" if self.loss == "sce" else "DC"
        return f"BLSTM {config.blstm_layers}x{config.blstm_units} {kind}+MI"

    def loss_description(self, config):
        kind = "source-contrastive" if self.loss == "sce" else "deep-clustering"
        return (f"mask inference (sqrt-magnitude MSE) + {config.embedding_weight} x {kind} embedding loss; "
                "global gradient norm clipped at 5")


class MelAutoencoderFamily(Family):
    name = "mel-autoencoder"

    def build_training_model(self, spectrogram, config, info=None):
        mel_autoencoder.mel_filterbank(spectrogram.sample_rate, spectrogram.n_fft, config.mel_bands)  # checks the count
        return mel_autoencoder.build_autoencoder(spectrogram.num_frames, config.mel_bands)

    def compile_args(self, config, spectrogram):
        return {"loss": keras.losses.BinaryCrossentropy(),
                "metrics": [keras.metrics.MeanAbsoluteError(name="mae")]}

    def model_io(self, spectrogram, config, info):
        import tensorflow as tf

        def to_model_io(batch):
            shape = [None, spectrogram.num_frames, config.mel_bands, 1]
            x = mel_autoencoder.tf_scaled_mel(batch["noisy_magnitude"], spectrogram, config.mel_bands)[..., tf.newaxis]
            y = mel_autoencoder.tf_scaled_mel(batch["clean_magnitude"], spectrogram, config.mel_bands)[..., tf.newaxis]
            return tf.ensure_shape(x, shape), tf.ensure_shape(y, shape)

        return to_model_io

    def inference_model(self, training_model, spectrogram, config):
        return mel_autoencoder.inference_model(training_model, spectrogram, config.mel_bands)

    def describe(self, config):
        return f"mel autoencoder ({config.mel_bands} mel bands)"

    def loss_description(self, config):
        return "binary cross-entropy on mels scaled to 0..1"


class StreamCrnFamily(Family):
    name = "stream-crn"
    optimizer_args = {"global_clipnorm": 5.0}  # the usual guard for recurrent layers

    def record_keys(self, config):
        from trainer.input_pipeline import WAVEFORM_KEYS

        return WAVEFORM_KEYS

    def build_training_model(self, spectrogram, config, info=None):
        return stream_family.build_training_model(spectrogram, config.stream_size)

    def compile_args(self, config, spectrogram):
        return {"loss": stream_family.hybrid_loss(spectrogram), "metrics": [stream_family.si_sdr_metric(spectrogram)]}

    def model_io(self, spectrogram, config, info):
        import tensorflow as tf

        def to_model_io(batch):
            y = tf_packed_spectra(batch["noisy_magnitude"], batch["noisy_phase"], batch["clean_magnitude"],
                                  batch["clean_phase"])
            y = tf.ensure_shape(y, [None, *spectrogram.shape, 4])
            return y[..., :2], y

        return to_model_io

    def inference_model(self, training_model, spectrogram, config):
        return next(layer for layer in training_model.layers if layer.name.startswith("stream_crn_"))

    def streaming(self, model, spectrogram, config):
        net = StreamingCrn(StreamSettings.for_sample_rate(spectrogram.sample_rate), config.stream_size)
        return net.describe(model)

    def describe(self, config):
        return f"streaming CRN ({config.stream_size})"

    def loss_description(self, config):
        f = stream_family
        return (f"{f.SPECTRUM_WEIGHT:g} x MSE of |Y|^{f.COMPRESSION:g} + {f.COMPLEX_WEIGHT:g} x MSE of the "
                f"compressed complex spectrum - {f.SI_SDR_WEIGHT:g} x SI-SDR (dB, capped at 30) of the waveform; "
                "gradient norm clipped at 5")


# One entry per `trainer.config.ARCHITECTURES` name (a test checks they match).
FAMILIES: dict[str, Family] = {family.name: family for family in (
    UNetFamily(), BlstmFamily("blstm-sce", "sce"), BlstmFamily("blstm-dc", "dc"), MelAutoencoderFamily(),
    StreamCrnFamily())}


def get_family(architecture: str) -> Family:
    if architecture not in FAMILIES:
        raise ValueError(f"architecture must be one of {tuple(FAMILIES)}. Received: architecture={architecture!r}")
    return FAMILIES[architecture]
