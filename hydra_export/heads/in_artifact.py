"""Heads inside an artifact, stored once.

The engine already holds the heads it drafts with, in its weights file; a full copy beside it
cost 16% of a 1.1B artifact (Hydra++ heads are ~20% of such a model). So an artifact's
``heads/`` keeps the config, an index (``engine_tensors.json``: heads tensor name -> engine
initializer), and in ``heads.safetensors`` only what the engine does not hold as is (heads the
tree never reaches, buffers the export folded away). ``load_heads`` reads such a directory by
joining the two; the index is untrusted input like the rest of the artifact: the initializer's
file stays inside the artifact, its byte range inside that file, its dtype and shape the ones
the heads expect.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx.external_data_helper import ExternalDataInfo
from torch import nn

from hydra_runtime.manifest import inside_artifact

from ..errors import HeadsCheckpointError
from .checkpoint import unique_tensors

INDEX_FILE = "engine_tensors.json"
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.FLOAT16: torch.float16,
                onnx.TensorProto.BFLOAT16: torch.bfloat16}
_NUMPY_BITS = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint16}


def engine_held_tensors(heads: nn.Module, engine_module: nn.Module, engine_model) -> dict[str, str]:
    """heads tensor name -> the engine initializer (weights file, same dtype and shape) that is it.

    ``engine_model`` is the saved engine graph without its weights; ``engine_module`` the module
    traced into it (initializers are named by the module paths that reach each parameter)."""
    stored = {init.name: init for init in engine_model.graph.initializer
              if init.data_location == init.EXTERNAL}
    paths: dict[int, list[str]] = {}
    for path, parameter in engine_module.named_parameters(remove_duplicate=False):
        paths.setdefault(id(parameter), []).append(path)
    index = {}
    for name, tensor in unique_tensors(heads).items():
        for path in paths.get(id(tensor), []):
            init = stored.get(path)
            if (init is not None and _ONNX_DTYPES.get(init.data_type) == tensor.dtype
                    and tuple(init.dims) == tuple(tensor.shape)):
                index[name] = path
                break
    return index


def write_index(heads_dir: Path, engine_file: str, index: dict[str, str]) -> None:
    (Path(heads_dir) / INDEX_FILE).write_text(json.dumps({"engine": engine_file, "tensors": index}, indent=1) + "\n")


def read_engine_tensors(heads_dir: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors ``heads_dir``'s index names, read from the engine's weights file; ``expected``
    (the heads module's own tensors by name) gives each one's dtype and shape."""
    heads_dir = Path(heads_dir)
    artifact = heads_dir.parent
    try:
        index = json.loads((heads_dir / INDEX_FILE).read_text())
        engine_file, names = index["engine"], dict(index["tensors"])
        if not isinstance(engine_file, str) or not all(isinstance(v, str) for v in (*names, *names.values())):
            raise TypeError("names must be strings")
    except (ValueError, KeyError, TypeError) as error:
        raise HeadsCheckpointError(f"{heads_dir / INDEX_FILE} is malformed ({error}); rebuild the artifact") from None
    engine = onnx.load(str(inside_artifact(artifact, engine_file)), load_external_data=False)
    initializers = {init.name: init for init in engine.graph.initializer}
    tensors = {}
    for name, initializer_name in names.items():
        init = initializers.get(initializer_name)
        target = expected.get(name)
        if init is None or target is None:
            raise HeadsCheckpointError(f"{heads_dir / INDEX_FILE} maps {name!r} to {initializer_name!r}, which "
                                       f"{'the heads do not have' if target is None else 'the engine lacks'}; "
                                       "rebuild the artifact")
        tensors[name] = _read_external(artifact, init, target, name)
    return tensors


def _read_external(artifact: Path, init, target: torch.Tensor, name: str) -> torch.Tensor:
    dtype = _ONNX_DTYPES.get(init.data_type)
    external = init.data_location == onnx.TensorProto.EXTERNAL
    if dtype != target.dtype or tuple(init.dims) != tuple(target.shape) or not external:
        raise HeadsCheckpointError(f"engine initializer {init.name!r} is not the heads' {name} "
                                   f"({dtype}, {tuple(init.dims)} vs {target.dtype}, {tuple(target.shape)}); "
                                   "rebuild the artifact")
    try:
        info = ExternalDataInfo(init)
    except ValueError as error:  # a negative or non-numeric offset or length
        raise HeadsCheckpointError(f"engine initializer {init.name!r}: {error}; rebuild the artifact") from None
    path = inside_artifact(artifact, info.location)
    offset, length = info.offset or 0, info.length or -1
    count = target.numel()
    if length != count * target.element_size() or offset < 0 or offset + length > os.path.getsize(path):
        raise HeadsCheckpointError(f"engine initializer {init.name!r} claims bytes {offset}+{length} of "
                                   f"{info.location}, which do not hold {name}; rebuild the artifact")
    bits = np.fromfile(path, dtype=_NUMPY_BITS[dtype], count=count, offset=offset)
    return torch.from_numpy(bits).view(dtype).reshape(target.shape)
