"""ONNX Runtime behind DecodeBackend, with IO binding: the KV cache stays where the provider computes.

On CPU the cache is numpy memory; with the CUDA execution provider it is device memory
allocated through ONNX Runtime (OrtValue). Either way the past_key_values.* inputs are
bound as views of the cache's prefix and the present.* outputs as the rows after it, by
pointer, so a step moves only its token ids and small integer outputs across to the host.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .decode_backend import HOST_DTYPES, BindingPlan, kv_part, resolve_shape
from ..errors import ArtifactError
from ..manifest import Manifest
from .onnx_engine import LazyEngines, check_provider

KV_DTYPES = {"float32": np.float32, "float16": np.float16}


class OrtBackend:
    def __init__(self, artifact_dir: Path, manifest: Manifest, provider: str = "cpu", threads: int | None = None):
        kv = manifest.kv
        if kv["dtype"] not in KV_DTYPES:
            raise ArtifactError(
                f"this artifact's KV cache is {kv['dtype']}, which ONNX Runtime's Python bindings cannot hold; "
                "run it with the TensorRT backend (`--backend tensorrt`), or rebuild with --dtype fp16 or fp32"
            )
        self.ort = check_provider(provider)
        self.name = f"onnxruntime-{provider}"
        self.graphs = manifest.graphs
        self.engines = LazyEngines(artifact_dir, {name: entry.file for name, entry in self.graphs.items()},
                                   provider=provider, threads=threads)
        self.device = "cuda" if provider == "cuda" else "cpu"
        self.kv_dtype = np.dtype(KV_DTYPES[kv["dtype"]])
        shape = (1, manifest.max_seq_len, kv["kv_heads"], kv["head_dim"])
        self.row_shape = (kv["kv_heads"], kv["head_dim"])
        self.row_bytes = kv["kv_heads"] * kv["head_dim"] * self.kv_dtype.itemsize
        self._cache = {(layer, part): self._allocate(shape)
                       for layer in range(kv["num_layers"]) for part in ("key", "value")}
        self._bindings: dict[str, object] = {}  # graph -> its reused ONNX Runtime IOBinding
        self._plans: dict[str, BindingPlan] = {}
        self.length = 0

    def _allocate(self, shape: tuple[int, ...]):
        if self.device == "cpu":
            return np.zeros(shape, dtype=self.kv_dtype)
        return self.ort.OrtValue.ortvalue_from_shape_and_type(shape, self.kv_dtype, "cuda", 0)

    def _address(self, name: str) -> int:
        buffer = self._cache[kv_part(name)]
        return buffer.ctypes.data if self.device == "cpu" else buffer.data_ptr()

    def _plan(self, graph: str) -> BindingPlan:
        if graph not in self._plans:
            self._plans[graph] = BindingPlan.of(self.graphs[graph], self._address)
        return self._plans[graph]

    def warm_up(self, graph: str) -> None:
        self.engines[graph]

    def reset(self) -> None:
        self.length = 0

    def commit(self, rows: int) -> None:
        self.length += rows

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.engines[graph].session
        plan = self._plan(graph)
        binding = self._bindings.get(graph) or self._bindings.setdefault(graph, session.io_binding())
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        symbols = plan.symbols(feeds, self.length)
        past_shape = (1, self.length, *self.row_shape)
        for name, address in plan.past:
            binding.bind_input(name, self.device, 0, self.kv_dtype, past_shape, address)
        host_inputs = [np.ascontiguousarray(feeds[spec["name"]]) for spec in plan.host_inputs]  # alive until run ends
        for spec, array in zip(plan.host_inputs, host_inputs):
            binding.bind_cpu_input(spec["name"], array)
        present_shape = resolve_shape(plan.present_shape, symbols, f"{graph}'s present.* outputs")
        offset = self.length * self.row_bytes
        for name, address in plan.present:
            binding.bind_output(name, self.device, 0, self.kv_dtype, present_shape, address + offset)
        host_outputs = {}
        for spec in plan.host_outputs:
            shape = resolve_shape(spec["shape"], symbols, f"{graph} output {spec['name']}")
            host = host_outputs[spec["name"]] = np.empty(shape, dtype=HOST_DTYPES[spec["dtype"]])
            binding.bind_output(spec["name"], "cpu", 0, host.dtype, shape, host.ctypes.data)
        session.run_with_iobinding(binding)
        return host_outputs
