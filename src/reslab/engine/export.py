"""``reslab export``: a trained net as ONNX, TorchScript or a ``torch.export`` ExportedProgram.

    uv run reslab export resnet20.cifar10 --format onnx --out resnet20.onnx

By default the input normalisation stored with the weights is part of the exported graph: it takes
raw pixels (N x C x H x W, uint8 0-255; ``input_dtype="float32"`` for float 0-255) and returns
logits, so a deployment needs no reslab code. ``bare=True`` exports the network alone (normalised
float input). The batch dimension is dynamic. ONNX files carry the class names and the input
convention in their metadata; onnxruntime is the reference runtime (``reslab bench infer``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reslab.errors import ConfigError, require_extra

FORMATS = ("onnx", "torchscript", "exported-program")
EXAMPLE = {"onnx": "model.onnx", "torchscript": "model.pt", "exported-program": "model.pt2"}


class Deployed(nn.Module):
    """The network with its input normalisation in front: raw pixels in, logits out."""

    def __init__(self, model: nn.Module, normalize: nn.Module) -> None:
        super().__init__()
        self.model, self.normalize = model, normalize

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(pixels))


def export(
    source: str | Path,
    fmt: str,
    out: str | Path,
    *,
    bare: bool = False,
    input_dtype: str = "uint8",
) -> dict[str, Any]:
    """Export the weights ``source`` (run directory, file or weights name) to ``out``; returns
    what the file holds (format, input convention, classes)."""
    from reslab.weights.trained import load_trained

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is invalid; valid choices: {', '.join(FORMATS)}")
    if input_dtype not in ("uint8", "float32"):
        raise ConfigError(f"--input-dtype {input_dtype!r}: valid choices: uint8, float32")
    out = Path(out)
    if out.is_dir():
        raise ConfigError(
            f"--out {out} is a directory; give the file to write, e.g. --out {out / EXAMPLE[fmt]}"
        )
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--out {out}: {parent} is a file, not a directory")
    trained = load_trained(source)
    model, meta, path, classes = trained.model, trained.meta, trained.path, trained.classes
    net = (model if bare else Deployed(model, trained.normalize)).eval()
    dtype = torch.float32 if bare else getattr(torch, input_dtype)
    example = torch.zeros(2, *model.default_input_size, dtype=dtype)
    info = {
        "format": fmt,
        "model": meta["model"],
        "weights": str(path),
        "input": "normalised float32 N x C x H x W"
        if bare
        else f"raw pixels {input_dtype} 0-255 N x C x H x W (RGB)",
        "input_size": list(model.default_input_size),
        "classes": classes,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        if fmt == "onnx":
            input_name = "pixels" if not bare else "input"
            _export_onnx(net, example, out, {0: batch}, input_name, info)
        elif fmt == "torchscript":
            traced = torch.jit.trace(net, example)
            torch.jit.save(traced, str(out), _extra_files={"reslab.json": json.dumps(info)})
        else:
            program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
            torch.export.save(program, str(out), extra_files={"reslab.json": json.dumps(info)})
    return {**info, "file": str(out)}


def _export_onnx(net: nn.Module, example: torch.Tensor, out: Path, batch_dim: dict, input_name: str,
                 info: dict[str, Any]) -> None:  # fmt: skip
    """``net`` as one self-contained ONNX file at ``out``, ``info`` in its metadata. torch's
    exporter writes the weights beside the graph (``<file>.data``); it runs in a scratch folder,
    and only the one file, weights inside (every reslab net is far below protobuf's 2 GiB), lands
    at ``out``."""
    import tempfile

    require_extra("onnxscript", "export", "ONNX export")
    onnx = require_extra("onnx", "export", "ONNX export")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        first = Path(scratch) / "model.onnx"
        torch.onnx.export(
            net, (example,), str(first), dynamo=True, dynamic_shapes=(batch_dim,),
            input_names=[input_name], output_names=["logits"],
        )  # fmt: skip
        graph = onnx.load(str(first))  # with the weights from the data file
        for key, value in info.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
        done = Path(scratch) / "done.onnx"
        onnx.save(graph, str(done))
        os.replace(done, out)
    # an earlier export's data file beside it: the new file references none
    out.with_name(f"{out.name}.data").unlink(missing_ok=True)
