"""Readers of the dataset store without TensorFlow, through the shard indexes: `readers.store`
(framework-free random access and numpy decoding), `readers.torch_data` (PyTorch datasets, their
worker batches handed over by `readers.shared_memory`), `readers.torch_training` (the DataLoaders of
Keras on the torch backend) and `readers.grain_source` (a grain data source for JAX).
docs/readers.md shows them in use."""
