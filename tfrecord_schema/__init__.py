"""The bottom layer: spectrogram geometry (`config`; the streaming family's STFT: `stream_stft`), what
a record holds (`schema`, `wire`), the TFRecord container (`records`), a dataset directory
(`dataset_info`, `dataset`, `shard_index`, `shard_writer`) and the path layer (`paths`). Import names
from their modules."""
