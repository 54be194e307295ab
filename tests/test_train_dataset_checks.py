"""`train` checks its dataset: shard sizes, corrupt records, batch size against the split, and that a
resumed run reads the dataset it started on. Every error names what is wrong and how to fix it."""

import os
import shutil

import keras
import pytest

from tfrecord_schema.dataset import Dataset
from trainer import input_pipeline
from trainer.train import train
from beam_pipelines.testing import write_dataset

# Keras 3 on TensorFlow converts tensors with np.array(x), which numpy 2 flags; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

TINY = {"base_filters": 4, "depth": 3, "batch_size": 4, "learning_rate": 3e-3, "seed": 0,
        "deterministic": True, "verbose": 0, "lr_schedule": "constant", "tensorboard": False}


@pytest.fixture
def dataset(tmp_path):
    directory = str(tmp_path / "dataset")
    write_dataset(directory, splits={"train": 8, "valid": 4}, num_shards=2, seed=1)
    return directory


def shard(directory, split, index):
    return os.path.join(directory, f"{split}.tfrecord-{index:05d}-of-00002")


def test_a_truncated_shard_is_refused_before_training_with_its_name_and_sizes(dataset, tmp_path):
    path = shard(dataset, "valid", 1)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(ValueError, match=rf"Shard {path} \('valid' split\) is {size - 100} bytes on disk, but "
                                         rf"dataset_info.json expects {size} bytes.*`speech-enhance inspect --verify "
                                         rf"{dataset}`") as refused:
        train(dataset, str(tmp_path / "model"), epochs=1, **TINY)
    assert refused.type is input_pipeline.CorruptShardError
    assert not os.path.exists(tmp_path / "model")  # refused before anything was written


def test_a_corrupt_record_found_while_training_names_its_shard(dataset, tmp_path):
    # A flipped byte keeps the size: only reading the record finds it ("corrupted record at N").
    path = shard(dataset, "train", 1)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match=rf"1 shard\(s\) of {dataset} are corrupt: {path}: corrupt (length|data) CRC "
                                         rf"at record \d+.*`speech-enhance inspect --verify {dataset}`") as refused:
        train(dataset, str(tmp_path / "model"), epochs=1, **TINY)
    assert refused.type is input_pipeline.CorruptShardError
    [problem] = Dataset.open(dataset).verify(["train", "valid"])[0]
    assert problem.path == path and " CRC at record " in problem.what


def test_a_batch_larger_than_the_training_split_is_refused(dataset, tmp_path):
    with pytest.raises(ValueError, match=r"train\(\): batch_size must be at most the 8 examples of the 'train' "
                                         r"split .*Received: batch_size=64\. Use --batch-size 8 or less"):
        train(dataset, str(tmp_path / "model"), epochs=1, **dict(TINY, batch_size=64))
    assert not os.path.exists(tmp_path / "model")


class _Interrupt(keras.callbacks.Callback):
    """Simulates a killed job in the second epoch."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("killed")


def test_a_run_resumes_only_on_the_dataset_it_started_on(dataset, tmp_path):
    model_dir, work_dir = str(tmp_path / "model"), str(tmp_path / "work")
    args = dict(TINY, epochs=2, work_dir=work_dir)
    with pytest.raises(KeyboardInterrupt):
        train(dataset, model_dir, callbacks=[_Interrupt()], **args)

    other = str(tmp_path / "other")
    write_dataset(other, splits={"train": 8, "valid": 4}, num_shards=2, seed=2)  # same shape, other mixtures
    with pytest.raises(ValueError, match=rf"{work_dir} holds the backup of an interrupted run on another dataset: "
                                         rf"it started on '{dataset}' \(fingerprint [0-9a-f]{{16}}\), and this run "
                                         rf"reads '{other}'.*--dataset.*--no-resume.*--work-dir"):
        train(other, model_dir, **args)

    # A copy of the same dataset is the same dataset: the run resumes there.
    copy = str(tmp_path / "copy")
    shutil.copytree(dataset, copy)
    summary = train(copy, model_dir, **args)
    assert summary["initial_epoch"] == 1 and summary["epochs_run"] == 2
