"""TensorRT plans behind DecodeBackend: preallocated device buffers, execute_async_v3 on one stream.

The KV cache is one device buffer per layer and part; every call binds its prefix as the
past_key_values.* inputs and the rows after it as the present.* outputs (tensor
addresses, no copies). Token ids go up and the small integer outputs come back by
cudaMemcpyAsync on the backend's stream, one synchronisation per call.

CUDA graphs are not captured: the past length, and so the input shapes, change every
step, and TensorRT would re-capture per shape.
"""

from __future__ import annotations

from math import prod
from pathlib import Path

import numpy as np

from .cuda_runtime import CudaError, CudaRuntime
from .decode_backend import HOST_DTYPES, BindingPlan, kv_part, resolve_shape
from ..errors import ArtifactError, HydraExportError
from ..manifest import Manifest

KV_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


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
        section = manifest.data.get("tensorrt")
        if not section:
            raise ArtifactError(f"{artifact_dir} holds no TensorRT plans; rebuild it with "
                                "`hydra-export build --target tensorrt`, or choose --backend cpu or cuda")
        trt = import_tensorrt()
        self.cuda = CudaRuntime.load()
        self.cuda.set_device(device)
        self.trt_runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.artifact_dir, self.plans, self.graphs = Path(artifact_dir), section["plans"], manifest.graphs
        self.max_seq_len = manifest.max_seq_len
        kv = manifest.kv
        self.row_shape = (kv["kv_heads"], kv["head_dim"])
        self.row_bytes = kv["kv_heads"] * kv["head_dim"] * KV_ITEMSIZE[kv["dtype"]]
        self._cache = {(layer, part): self.cuda.malloc(self.max_seq_len * self.row_bytes)
                       for layer in range(kv["num_layers"]) for part in ("key", "value")}
        self.stream = self.cuda.stream()
        self._loaded: dict[str, tuple] = {}  # graph -> (engine, context, BindingPlan, {host tensor: device buffer})
        self.length = 0

    def _load(self, graph: str):
        """(context, binding plan, {host tensor name: its device buffer}) of a graph, loaded on first use."""
        if graph not in self._loaded:
            plan_file = self.artifact_dir / self.plans[graph]
            engine = self.trt_runtime.deserialize_cuda_engine(plan_file.read_bytes())
            if engine is None:
                raise ArtifactError(f"TensorRT could not load {plan_file} (built by another TensorRT version or "
                                    "for another GPU?); rebuild the artifact on this machine with --target tensorrt")
            plan = BindingPlan.of(self.graphs[graph], lambda name: self._cache[kv_part(name)])
            host = plan.host_inputs + plan.host_outputs
            largest = {dim: self.max_seq_len for spec in host for dim in spec["shape"] if isinstance(dim, str)}
            buffers = {spec["name"]: self.cuda.malloc(prod(resolve_shape(spec["shape"], largest, graph))
                                                      * np.dtype(HOST_DTYPES[spec["dtype"]]).itemsize)
                       for spec in host}
            self._loaded[graph] = (engine, engine.create_execution_context(), plan, buffers)  # engine outlives context
        return self._loaded[graph][1:]

    def warm_up(self, graph: str) -> None:
        self._load(graph)

    def reset(self) -> None:
        self.length = 0

    def commit(self, rows: int) -> None:
        self.length += rows

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        context, plan, buffers = self._load(graph)
        symbols = plan.symbols(feeds, self.length)
        past_shape = (1, self.length, *self.row_shape)
        for name, address in plan.past:
            context.set_input_shape(name, past_shape)
            context.set_tensor_address(name, address)
        for spec in plan.host_inputs:
            name = spec["name"]
            context.set_input_shape(name, np.shape(feeds[name]))
            self.cuda.to_device(buffers[name], np.ascontiguousarray(feeds[name], HOST_DTYPES[spec["dtype"]]), self.stream)
            context.set_tensor_address(name, buffers[name])
        offset = self.length * self.row_bytes
        for name, address in plan.present:
            context.set_tensor_address(name, address + offset)
        host_outputs = {}
        for spec in plan.host_outputs:
            name = spec["name"]
            context.set_tensor_address(name, buffers[name])
            shape = resolve_shape(spec["shape"], symbols, f"{graph} output {name}")
            host_outputs[name] = np.empty(shape, dtype=HOST_DTYPES[spec["dtype"]])
        if not context.execute_async_v3(self.stream):
            raise CudaError(f"TensorRT failed to run the {graph} plan (see its log above)")
        for name, host in host_outputs.items():
            self.cuda.to_host(host, buffers[name], self.stream)
        self.cuda.synchronize(self.stream)
        return host_outputs
