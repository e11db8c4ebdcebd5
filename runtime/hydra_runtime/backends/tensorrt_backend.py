"""The TensorRT plan behind DecodeBackend: preallocated device buffers, execute_async_v3 on one stream.

The KV cache is one device buffer per layer and part; every call binds its prefix as the
past_key_values.* inputs. TensorRT wants every tensor address 256-byte aligned, and the
row right after the prefix is not (a SmolLM2 fp16 row is 384 bytes), so the present.*
outputs go to aligned staging buffers and the rows are copied after the prefix on the
device (one cudaMemcpyAsync per layer and part, D+1 rows in steady state). Token ids go up
and the small integer outputs come back on the same stream, one synchronisation per call.
Long prompts are fed in chunks of at most ``max_causal_tokens`` so the staging stays small.

CUDA graphs are not captured: the past length, and so the input shapes, change every
step, and TensorRT would re-capture per shape.
"""

from __future__ import annotations

from math import prod
from pathlib import Path

import numpy as np

from ..engine import ACCEPTED_NODES, COPY_NODES, COPY_TOKENS, NEW_TOKENS, PAST_PREFIX, TREE_NODES, TREE_TOKENS
from ..errors import ArtifactError, HydraExportError
from ..manifest import Manifest, TensorSpec
from .cuda_runtime import CudaError, CudaRuntime
from .decode_backend import (
    HOST_DTYPES,
    STAGED_CAUSAL_TOKENS,
    BindingPlan,
    check_signature,
    kv_part,
    resolve_shape,
)

TRT_DTYPE_NAMES = {"FLOAT": "float", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64", "INT32": "int32",
                   "BOOL": "bool"}
KV_ITEMSIZE = {"float": 4, "float16": 2, "bfloat16": 2}


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise HydraExportError(
            "tensorrt is not installed; install the GPU extra (`pip install 'hydra-export[gpu]'`) "
            "on a machine with an NVIDIA GPU, or choose --backend cpu"
        ) from None
    return tensorrt


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, artifact_dir: Path, manifest: Manifest, device: int = 0):
        if manifest.tensorrt is None:
            raise ArtifactError(f"{artifact_dir} holds no TensorRT plan; rebuild it with "
                                "`hydra-export build --target tensorrt`, or choose --backend cpu or cuda")
        trt = import_tensorrt()
        self.cuda = CudaRuntime.load()
        self.cuda.set_device(device)
        self._buffers: list[int] = []
        self.stream = None
        plan_file = Path(artifact_dir) / manifest.tensorrt.plan
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan_file.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"TensorRT could not load {plan_file} (built by another TensorRT version or "
                                "for another GPU?); rebuild the artifact on this machine with --target tensorrt")
        signature = engine_signature(self.engine, trt)
        check_signature(manifest, signature, f"{plan_file.name} (TensorRT)")
        self._check_profile(manifest)
        past = next(spec for spec in signature if spec.name.startswith(PAST_PREFIX))
        self.row_shape = tuple(int(dim) for dim in past.shape[2:])  # from the plan, never from the manifest
        self.row_bytes = prod(self.row_shape) * KV_ITEMSIZE[past.dtype]
        path_length = int(manifest.engine.output(ACCEPTED_NODES).shape[0])
        self.capacity = manifest.max_seq_len + path_length
        self.max_causal_tokens = STAGED_CAUSAL_TOKENS
        layers = sum(1 for spec in signature if spec.name.startswith(PAST_PREFIX)) // 2
        self._cache = {(layer, part): self._malloc(self.capacity * self.row_bytes)
                       for layer in range(layers) for part in ("key", "value")}
        self._plan = BindingPlan.of(manifest.engine, lambda name: self._cache[kv_part(name)])
        staging_rows = STAGED_CAUSAL_TOKENS + path_length
        self._staging = {name: self._malloc(staging_rows * self.row_bytes) for name, _ in self._plan.present}
        largest = {NEW_TOKENS: STAGED_CAUSAL_TOKENS, TREE_NODES: manifest.tree.num_nodes,
                   COPY_NODES: manifest.tree.copy_nodes}
        self._host_buffers = {spec.name: self._malloc(max(1, prod(resolve_shape(spec.shape, largest, "the plan")))
                                                      * np.dtype(HOST_DTYPES[spec.dtype]).itemsize)
                              for spec in self._plan.host_inputs + self._plan.host_outputs}
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise CudaError("TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = self.cuda.stream()
        self.length = 0

    def _malloc(self, nbytes: int) -> int:
        pointer = self.cuda.malloc(nbytes)  # cudaMalloc returns 256-byte aligned memory
        self._buffers.append(pointer)
        return pointer

    def _check_profile(self, manifest: Manifest) -> None:
        """The plan's profile must cover the manifest's tree, chain and context (it sized the graph's shapes)."""
        tree_max = self.engine.get_tensor_profile_shape(TREE_TOKENS, 0)[2][0]
        copy_max = (self.engine.get_tensor_profile_shape(COPY_TOKENS, 0)[2][0] if manifest.tree.copy_nodes
                    else 0)  # without a chain, copy_tokens is a static [0] (checked with the signature)
        past_name = next(spec.name for spec in manifest.engine.inputs if spec.name.startswith(PAST_PREFIX))
        past_max = self.engine.get_tensor_profile_shape(past_name, 0)[2][1]
        if (tree_max, copy_max) != (manifest.tree.num_nodes, manifest.tree.copy_nodes) or \
                past_max < manifest.max_seq_len - 1:
            raise ArtifactError(f"the TensorRT plan serves trees of {tree_max} nodes, copy chains of {copy_max} and "
                                f"{past_max + 1} positions, but manifest.json says {manifest.tree.num_nodes}, "
                                f"{manifest.tree.copy_nodes} and {manifest.max_seq_len}; the artifact was edited: "
                                "rebuild it")

    def reset(self) -> None:
        self.length = 0

    def commit(self, rows: int) -> None:
        self.length += rows

    def close(self) -> None:
        """Free the device buffers and the stream (also on a half-finished __init__)."""
        self.context = self.engine = None
        for pointer in self._buffers:
            self.cuda.free(pointer)
        self._buffers = []
        if self.stream is not None:
            self.cuda.destroy_stream(self.stream)
            self.stream = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the CUDA runtime may be gone already
            pass

    def _set(self, name: str, address: int, shape: tuple[int, ...] | None = None) -> None:
        if shape is not None and not self.context.set_input_shape(name, shape):
            raise CudaError(f"TensorRT refused shape {list(shape)} for {name} (outside the plan's profile)")
        if not self.context.set_tensor_address(name, address):
            raise CudaError(f"TensorRT refused the address of {name}")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.context is None:
            raise ArtifactError("this backend was closed; load the artifact again")
        plan = self._plan
        plan.check_room(feeds, self.length, self.capacity)
        symbols = plan.symbols(feeds, self.length)
        for name, address in plan.past:
            self._set(name, address, (1, self.length, *self.row_shape))
        for spec in plan.host_inputs:
            array = np.ascontiguousarray(feeds[spec.name], HOST_DTYPES[spec.dtype])
            self.cuda.to_device(self._host_buffers[spec.name], array, self.stream)
            self._set(spec.name, self._host_buffers[spec.name], array.shape)
        for name, _ in plan.present:
            self._set(name, self._staging[name])
        host_outputs = {}
        for spec in plan.host_outputs:
            self._set(spec.name, self._host_buffers[spec.name])
            host_outputs[spec.name] = np.empty(resolve_shape(spec.shape, symbols, f"engine output {spec.name}"),
                                               dtype=HOST_DTYPES[spec.dtype])
        if not self.context.execute_async_v3(self.stream):
            raise CudaError("TensorRT failed to run the engine plan (see its log above)")
        rows = plan.rows_written(feeds) * self.row_bytes
        for name, address in plan.present:  # all rows; commit() keeps the accepted ones
            self.cuda.copy_on_device(address + self.length * self.row_bytes, self._staging[name], rows, self.stream)
        for name, host in host_outputs.items():
            self.cuda.to_host(host, self._host_buffers[name], self.stream)
        self.cuda.synchronize(self.stream)
        return host_outputs


def engine_signature(engine, trt) -> list[TensorSpec]:
    """The plan's I/O tensors as manifest TensorSpecs (dynamic dims as "?")."""
    specs = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        dtype = TRT_DTYPE_NAMES.get(engine.get_tensor_dtype(name).name, engine.get_tensor_dtype(name).name.lower())
        specs.append(TensorSpec(name, dtype, tuple(dim if dim >= 0 else "?" for dim in engine.get_tensor_shape(name))))
    return specs
