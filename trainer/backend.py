"""Setting up the Keras backend for a training run: the backend a distribution needs, the
distribution scope, the dtype policy, and TensorFlow kept off the accelerators it does not drive.

Keras picks its backend when it is first imported: KERAS_BACKEND ("tensorflow", "jax" or "torch")
must be set before this module is imported (`speech-enhance train --backend` does so).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import keras
import tensorflow as tf

logger = logging.getLogger(__name__)

_BACKEND_OF = {"mirrored": "tensorflow", "tpu": "tensorflow", "jax-data-parallel": "jax"}


def check_backend(distribution: str | None) -> None:
    """Refuses a `distribution` that the backend Keras runs on cannot do."""
    backend = keras.backend.backend()
    wanted = _BACKEND_OF.get(distribution)
    if wanted and backend != wanted:
        raise ValueError(
            f"train(): distribution={distribution!r} needs the {wanted} backend, but Keras runs on "
            f"{backend!r}. Set KERAS_BACKEND={wanted} before Keras is imported (`speech-enhance train "
            f"--backend {wanted}`).")


@contextlib.contextmanager
def distribution(kind: str | None, tpu: str | None, batch_size: int) -> Iterator[int]:
    """Enters the distribution scope for building and compiling the model; yields the replica count."""
    if kind is None:
        yield 1
        return
    if kind == "jax-data-parallel":
        devices = keras.distribution.list_devices()
        if batch_size % len(devices):
            raise ValueError(f"train(): batch_size must be a multiple of the {len(devices)} devices for "
                             f"distribution='jax-data-parallel'. Received: batch_size={batch_size}")
        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        try:
            yield len(devices)
        finally:
            keras.distribution.set_distribution(previous)
        return
    if kind == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
        # None: Colab or $TPU_NAME; "local": the TPU VM this runs on; else a TPU name or grpc:// address.
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        if tpu != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    if batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"train(): batch_size (global) must be a multiple of the {strategy.num_replicas_in_sync} "
                         f"replicas. Received: batch_size={batch_size}")
    with strategy.scope():
        yield strategy.num_replicas_in_sync


def keep_tensorflow_off_accelerators() -> None:
    """On JAX, TensorFlow only feeds batches (on torch, not even that): stop it from taking GPU
    memory that the backend needs."""
    if keras.backend.backend() not in ("jax", "torch"):
        return
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError as err:  # TensorFlow already initialised its devices in this process
        logger.warning("could not hide the GPUs from TensorFlow (%s); it may hold GPU memory JAX needs", err)


@contextlib.contextmanager
def dtype_policy(precision: str) -> Iterator[None]:
    """Sets Keras' dtype policy ("float32", "mixed_bfloat16"...) inside the block."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
