"""tf.data input pipeline over the dataset shards, the Keras 3 U-Net, and training."""
