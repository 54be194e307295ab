"""`speech-enhance export --format onnx MODEL_DIR OUT_DIR`: a streaming model as an ONNX graph.

The core model of the streaming family (`trainer.streaming_crn`) is exported from the TensorFlow
backend with tf2onnx (`keras.Model.export(format="onnx")`): inputs `spectra` [1, T, bins, 2] (T
open: one frame at a time, or more) and `state_0..`, outputs `enhanced` and `state_out_0..`, the
model's state after the frames. OUT_DIR/model.json holds the STFT ("streaming"), the names of the
inputs and outputs in order and the training data's spectrogram, so `predict --model OUT_DIR` and
`evaluate --model NAME=OUT_DIR` run it with onnxruntime (`predictor.stream_models`). A windowed
model (the U-Net family) is refused: its windows overlap and are crossfaded, which one graph per
frame cannot do.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

from predictor.stream_models import ONNX_FILE, ONNX_FORMAT, ONNX_INFO_FILE

FORMATS = ("onnx",)
INSTALL_HINT = "pip install 'speech-enhance[onnx]'"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export a streaming model as ONNX",
        description="Write MODEL_DIR's streaming model (`train --architecture stream-crn`) to OUT_DIR as model.onnx "
                    "(inputs spectra [1, T, bins, 2] and state_0.., outputs enhanced and state_out_0..; T frames per "
                    "call, 1 for frame-by-frame streaming) and model.json (its STFT, names and state shapes). "
                    "`predict --model OUT_DIR` and `evaluate --model NAME=OUT_DIR` run the export with onnxruntime. "
                    f"Needs tf2onnx and onnx: {INSTALL_HINT}. See docs/predict.md, Streaming models.")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="the export's format (onnx)")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a model directory of the streaming family")
    p.add_argument("output_dir", metavar="OUT_DIR", help="the folder to write model.onnx and model.json into")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace, extra: list[str]) -> int:
    path = export_onnx(args.model_dir, args.output_dir)
    print(f"wrote {path} and {os.path.join(args.output_dir, ONNX_INFO_FILE)}")
    return 0


def export_onnx(model_dir: str, output_dir: str) -> str:
    """Exports the streaming model of `model_dir` to `output_dir`/model.onnx (+ model.json); returns its path.

    Raises ValueError for a model directory that is not of the streaming family, and ImportError
    naming the extra when tf2onnx is missing.
    """
    from trainer.model_dir import read_model_info

    info = read_model_info(model_dir)
    streaming = info.get("streaming")
    if not streaming:
        family = (info.get("model") or {}).get("architecture", "unet")
        raise ValueError(f"model_dir={model_dir!r} holds a windowed model ({family}), not a streaming one: its model.json "
                         "has no \"streaming\" entry. Only the streaming family (`train --architecture stream-crn`) is "
                         "exported to ONNX; run a windowed model with `speech-enhance predict --model DIR`.")
    try:
        import tf2onnx  # noqa: F401  (Keras' ONNX export on the TensorFlow backend)
    except ImportError as err:
        raise ImportError(f"export --format onnx needs tf2onnx and onnx ({err}). Install them: {INSTALL_HINT}") from err
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ValueError(f"export --format onnx runs on the TensorFlow backend. Received: KERAS_BACKEND="
                         f"{keras.backend.backend()!r}; set KERAS_BACKEND=tensorflow")
    import numpy as np

    from trainer.model_dir import load_model_dir  # it registers the family's layers

    core, _ = load_model_dir(model_dir)
    named = _renamed(core)
    states = [np.zeros((1, *shape), np.float32) for shape in streaming["state_shapes"]]
    named([np.zeros((1, 1, named.inputs[0].shape[2], 2), np.float32), *states])  # built before export
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, ONNX_FILE)
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)  # its graph optimiser's lines say nothing to a user
    named.export(path, format="onnx", verbose=False)
    outputs = ["enhanced"] + [f"state_out_{i}" for i in range(len(states))]
    _rename_outputs(path, outputs)
    export_info = {"format": ONNX_FORMAT, "streaming": streaming, "spectrogram": info["spectrogram"],
                   "target": info["target"], "inputs": [x.name for x in named.inputs], "outputs": outputs,
                   "source": {"model_dir": os.path.abspath(model_dir), "model": info.get("model")}}
    with open(os.path.join(output_dir, ONNX_INFO_FILE), "w", encoding="utf-8") as f:
        json.dump(export_info, f, indent=2)
    return path


def _renamed(core):
    """The core with its outputs named `enhanced` (the core's last layer), `state_out_0..`."""
    import keras

    states = [keras.layers.Identity(name=f"state_out_{i}")(y) for i, y in enumerate(core.outputs[1:])]
    return keras.Model(core.inputs, [core.outputs[0], *states], name=core.name)


def _rename_outputs(path: str, names: list[str]) -> None:
    """Gives the graph's outputs (tf2onnx names them after TensorFlow's tensors) `names`, in order."""
    import onnx

    model = onnx.load(path)
    renames = {output.name: name for output, name in zip(model.graph.output, names)}
    for node in model.graph.node:
        node.input[:] = [renames.get(x, x) for x in node.input]
        node.output[:] = [renames.get(x, x) for x in node.output]
    for output in model.graph.output:
        output.name = renames[output.name]
    onnx.checker.check_model(model)
    onnx.save(model, path)
