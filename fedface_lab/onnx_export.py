"""A model as ONNX, for apps that run it with onnxruntime (phones, browsers) rather than torch.

Input "input": float32 (N, 3, S, S), crops already normalised as the manifest says (mean/std, colour
order); N is dynamic. Output "embedding": (N, d), L2-normalised. The manifest travels in the ONNX model's
metadata_props under "fedface.manifest", so the app knows the crop size, alignment template,
normalisation and the calibrated thresholds. Every export is run with onnxruntime on real face crops and
compared with torch before it is kept."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from fedface_common.face.manifest import ModelManifest
from fedface_common.face.preprocess import batch_to_tensor
from fedface_common.wire import MANIFEST_METADATA_KEY

FORMATS = ("onnx",)
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
OPSET = 17
TOLERANCE = 1e-4  # max abs difference of unit embeddings between onnxruntime and torch


class ExportError(RuntimeError):
    """The exported model does not reproduce torch's output, or lacks its manifest; nothing is kept."""


def to_onnx_bytes(model: nn.Module, manifest: ModelManifest) -> bytes:
    """The serialised ONNX model with the manifest in its metadata."""
    import onnx

    model = model.eval()
    s = manifest.input_size
    example = torch.zeros(2, 3, s, s)
    # Through a file: torch.onnx.export is typed (and documented) for paths, not file objects.
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        path = Path(tmp) / "model.onnx"
        # The TorchScript-based exporter (dynamo=False): the torch.export-based one needs onnxscript,
        # which the lab extra does not install. It warns that it is deprecated, and the tracer warns
        # about the models' shape checks and padding branches; those depend only on the spatial size,
        # which is fixed by the manifest, never on the batch size, which stays dynamic.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(model, (example,), path, dynamo=False, opset_version=OPSET, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: {0: "batch"},
                                                                    OUTPUT_NAME: {0: "batch"}})
        proto = onnx.load(path)
    # The tracer leaves the embedding's width symbolic; it is fixed, and an app may size buffers by it.
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = manifest.embedding_dim
    onnx.helper.set_model_props(proto, {MANIFEST_METADATA_KEY: manifest.to_json()})
    proto.doc_string = (f"FedFace {manifest.architecture}: {INPUT_NAME} float32 (N, 3, {s}, {s}) normalised "
                        f"crops -> {OUTPUT_NAME} (N, {manifest.embedding_dim}) L2-normalised")
    onnx.checker.check_model(proto)
    return bytes(proto.SerializeToString())


def check_onnx(data: bytes, model: nn.Module, manifest: ModelManifest, crops: Sequence[Image.Image]) -> float:
    """Run the ONNX model with onnxruntime on the crops, as one batch and one at a time (the batch
    axis is dynamic), and return the largest difference from torch's embeddings. Raises ExportError
    above TOLERANCE or when the manifest cannot be read back from the metadata."""
    import onnxruntime as ort

    if not crops:
        raise ExportError("no face crops to check the export on")
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    if MANIFEST_METADATA_KEY not in meta or ModelManifest.from_json(meta[MANIFEST_METADATA_KEY]) != manifest:
        raise ExportError(f"the exported model does not carry the manifest under {MANIFEST_METADATA_KEY!r}")
    x = batch_to_tensor(crops, manifest)
    with torch.inference_mode():
        expected = model.eval()(x).numpy()
    batched = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    single = np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + 1].numpy()})[0]
                             for i in range(len(x))])
    diff = float(max(np.abs(batched - expected).max(), np.abs(single - expected).max()))
    if batched.shape != expected.shape or not diff <= TOLERANCE:  # `not <=` also catches NaN
        raise ExportError(f"onnxruntime differs from torch by {diff:.3g} (tolerance {TOLERANCE:g}) on "
                          f"{len(crops)} face crops; nothing written")
    return diff


def export_onnx(model: nn.Module, manifest: ModelManifest, out: str | Path,
                crops: Sequence[Image.Image]) -> tuple[Path, float]:
    """Export, check against torch on `crops` (real aligned faces), then write `out` atomically. Returns
    the path and the largest difference found."""
    data = to_onnx_bytes(model, manifest)
    diff = check_onnx(data, model, manifest, crops)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out, diff
