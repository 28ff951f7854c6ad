"""Export a job's trained model for use outside citymesh: ONNX, or TorchScript.

The exported model takes the encoded feature matrix (float32, one row per
flight, ``encoding.width`` columns; see ``encoding.json`` beside it) and returns
one logit per row. ONNX is written when the ``onnx`` package is installed,
with torch's TorchScript-based exporter, which needs no other package.
Otherwise the model is saved as TorchScript.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from citymesh.federation import JobSpec
from citymesh.federation.model import build_model
from citymesh.job_files import atomic_write_bytes

logger = logging.getLogger("citymesh.jobs")

__all__ = ["ExportedModel", "export_model"]

ONNX_OPSET = 17


@dataclass(frozen=True)
class ExportedModel:
    """An exported model file and its format ("onnx" or "torchscript")."""

    path: Path
    format: str
    inputs: int


def export_model(
    spec: JobSpec,
    state: dict[str, torch.Tensor],
    inputs: int,
    folder: Path,
) -> ExportedModel:
    """Export the model of ``spec`` with weights ``state`` into ``folder``.

    ``inputs`` is the width of the encoded feature matrix.
    """
    model = build_model(spec.model, inputs, seed=spec.seed)
    model.load_state_dict(state)
    model.eval()
    example = torch.zeros(2, inputs, dtype=torch.float32)
    if importlib.util.find_spec("onnx") is not None:
        path = folder / "model.onnx"
        atomic_write_bytes(path, _onnx_bytes(model, example))
        return ExportedModel(path, "onnx", inputs)
    logger.info("package onnx is not installed; exporting the model as TorchScript")
    path = folder / "model.ts"
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(model, example), buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return ExportedModel(path, "torchscript", inputs)


def _onnx_bytes(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # torch 2.9+ names the TorchScript-based exporter legacy; the newer
        # exporter needs the onnxscript package, which citymesh does not install.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["features"],
            output_names=["logit"],
            dynamic_axes={"features": {0: "rows"}, "logit": {0: "rows"}},
        )
    return buffer.getvalue()
