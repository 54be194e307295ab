"""The one definition of the spectrogram geometry and of what a dataset record holds."""

from tfrecord_schema.config import SpectrogramConfig
from tfrecord_schema.dataset_info import SPLITS, DatasetInfo
from tfrecord_schema.schema import (
    METADATA_FEATURES,
    MODEL_SCHEMA_VERSIONS,
    SCHEMA_VERSION,
    SPECTROGRAM_KEYS,
    SchemaVersionError,
    check_schema_version,
    decode,
    encode,
    tf_feature_spec,
)

__all__ = [
    "DatasetInfo", "METADATA_FEATURES", "MODEL_SCHEMA_VERSIONS", "SCHEMA_VERSION", "SPECTROGRAM_KEYS", "SPLITS", "SchemaVersionError",
    "SpectrogramConfig",
    "check_schema_version", "decode", "encode", "tf_feature_spec",
]
