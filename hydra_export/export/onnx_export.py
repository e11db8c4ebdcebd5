"""torch.onnx (dynamo) export of one GraphSpec, and storing the weights of all graphs once."""

from __future__ import annotations

import hashlib
import logging
import inspect
import warnings
from pathlib import Path

import onnx
import torch

from ..errors import HydraExportError
from .graph_specs import GraphSpec

OPSET = 18

# The exporter logs a warning per missing optional op library (torchvision); not ours to act on.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
WEIGHTS_FILE = "weights.bin"
ALIGNMENT = 64  # byte alignment of every tensor in the shared weights file


def export_graph(spec: GraphSpec, scratch: Path) -> onnx.ModelProto:
    """Trace ``spec.module`` and return the ONNX model with its weights loaded in memory."""
    dims = {}
    for index, name in enumerate(spec.input_names):
        axes = spec.dynamic_dims.get(name)
        dims[name] = {axis: torch.export.Dim(symbol, min=1, max=1 << 20) for axis, symbol in axes.items()} if axes else None
    # Dims with the same symbolic name must be the same Dim object.
    shared: dict[str, torch.export.Dim] = {}
    for name, axes in dims.items():
        if axes:
            dims[name] = {axis: shared.setdefault(dim.__name__, dim) for axis, dim in axes.items()}
    path = scratch / f"{spec.name}.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                spec.module,
                spec.sample_inputs,
                dynamo=True,
                input_names=list(spec.input_names),
                output_names=list(spec.output_names),
                dynamic_shapes=_nest_varargs(spec.module, [dims[name] for name in spec.input_names]),
                opset_version=OPSET,
                optimize=True,
                verbose=False,
            )
        except Exception as error:  # the exporter raises many types; name the graph and re-raise typed
            raise HydraExportError(f"tracing the {spec.name} graph failed: {error}") from error
    program.save(str(path), external_data=True)
    model = onnx.load(str(path), load_external_data=True)
    _name_dynamic_dims(model, spec)
    return model


def _nest_varargs(module: torch.nn.Module, per_input: list) -> tuple:
    """torch.export wants a ``*past`` parameter's shapes as one nested tuple."""
    parameters = inspect.signature(module.forward).parameters.values()
    fixed = sum(1 for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    if any(p.kind == p.VAR_POSITIONAL for p in parameters) and len(per_input) > fixed:
        # {} rather than None for static inputs: a tuple of only Nones is not matched structurally.
        return (*per_input[:fixed], tuple(dims if dims is not None else {} for dims in per_input[fixed:]))
    return tuple(per_input)


def _name_dynamic_dims(model: onnx.ModelProto, spec: GraphSpec) -> None:
    """Give dynamic axes the names users see in the manifest (past_sequence, prompt_sequence)."""
    for value in [*model.graph.input, *model.graph.output]:
        axes = spec.dynamic_dims.get(value.name, {})
        for axis, symbol in axes.items():
            dim = value.type.tensor_type.shape.dim[axis]
            dim.Clear()
            dim.dim_param = symbol


def save_with_shared_weights(models: dict[str, onnx.ModelProto], out_dir: Path) -> None:
    """Write every graph to ``out_dir``, storing each distinct initializer once in weights.bin.

    Graphs traced from the same modules carry identical weights under possibly different
    names; they are matched by content, so the prefill, step and decode graphs share one copy.
    """
    offsets: dict[bytes, tuple[int, int]] = {}
    with open(out_dir / WEIGHTS_FILE, "wb") as weights:
        for name, model in models.items():
            for tensor in model.graph.initializer:
                data = onnx.numpy_helper.to_array(tensor).tobytes()
                if len(data) < 1024:
                    continue  # small constants stay inside the graph
                key = hashlib.sha256(data).digest() + str(tensor.data_type).encode() + str(list(tensor.dims)).encode()
                if key not in offsets:
                    pad = (-weights.tell()) % ALIGNMENT
                    weights.write(b"\0" * pad)
                    offsets[key] = (weights.tell(), len(data))
                    weights.write(data)
                offset, length = offsets[key]
                _point_to_external(tensor, offset, length)
            onnx.save(model, str(out_dir / f"{name}.onnx"))


def _point_to_external(tensor: onnx.TensorProto, offset: int, length: int) -> None:
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        tensor.ClearField(field)
    del tensor.external_data[:]
    for key, value in (("location", WEIGHTS_FILE), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL
