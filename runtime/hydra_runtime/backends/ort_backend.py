"""ONNX Runtime behind DecodeBackend, with IO binding: the KV cache stays where the provider computes.

On CPU the cache is numpy memory; with the CUDA execution provider it is device memory
allocated through ONNX Runtime (OrtValue). Either way the past_key_values.* inputs are
bound as views of the cache's prefix and the present.* outputs as the rows after it, by
pointer, so a step moves only its token ids and small integer outputs across to the host.
One session holds the engine's weights once.

On the GPU every bound address must be 256-byte aligned, and the row after the prefix is not
always (a SmolLM2 fp16 row is 384 bytes): there the present.* outputs go to aligned staging
buffers and their rows are copied after the prefix on the device, as the TensorRT backend does
(prompts are then fed in chunks, so the staging stays small).
"""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import numpy as np

from ..engine import ACCEPTED_NODES, COPY_NODES_METADATA, MAX_SEQ_LEN_METADATA, PAST_PREFIX, TREE_METADATA
from ..errors import ArtifactError
from ..manifest import Manifest, TensorSpec
from .decode_backend import (
    ALIGNMENT,
    HOST_DTYPES,
    KV_ONNX_DTYPES,
    STAGED_CAUSAL_TOKENS,
    BindingPlan,
    check_signature,
    kv_part,
    resolve_shape,
)
from .mapped_pages import MappedPages
from .onnx_engine import OnnxEngine

KV_DTYPES = {"float": np.float32, "float16": np.float16}
# Prompt tokens per call on the CPU. A prefill's activations grow with the square of its length
# (attention scores, the bias) and ONNX Runtime's arena keeps what it grew to: a 1,538-token prompt
# in one call peaked at 1.13 GB of RSS for the default artifact's 575 MB of weights, in chunks of
# 256 at 0.82 GB, and prefilled faster (4.3-4.6 s against 5.3-5.8 s). BENCHMARKS.md section H.
CPU_PROMPT_CHUNK = 256
ALIGNED_DEVICES = ("cuda",)  # devices whose bound addresses must be ALIGNMENT-aligned


class OrtBackend:
    def __init__(self, artifact_dir: Path, manifest: Manifest, provider: str = "cpu", threads: int | None = None):
        if KV_ONNX_DTYPES.get(manifest.kv_cache.dtype) not in KV_DTYPES:  # before ORT fails on bf16 kernels
            _refuse_kv_dtype(manifest.kv_cache.dtype)
        self.engine = OnnxEngine(Path(artifact_dir) / manifest.engine.file, provider=provider, threads=threads)
        session = self.engine.session
        signature = session_signature(session)
        check_signature(manifest, signature, f"{manifest.engine.file} (ONNX Runtime)")
        check_engine_metadata(session, manifest)
        past = next(spec for spec in signature if spec.name.startswith(PAST_PREFIX))
        if past.dtype not in KV_DTYPES:
            _refuse_kv_dtype(past.dtype)
        self.ort = self.engine.ort
        self.name = f"onnxruntime-{provider}"
        self.device = "cuda" if provider == "cuda" else "cpu"
        self.kv_dtype = np.dtype(KV_DTYPES[past.dtype])
        self.row_shape = tuple(int(dim) for dim in past.shape[2:])  # from the engine, never from the manifest
        self.row_bytes = int(np.prod(self.row_shape)) * self.kv_dtype.itemsize
        layers = sum(1 for spec in signature if spec.name.startswith(PAST_PREFIX)) // 2
        self.capacity = manifest.max_seq_len + manifest.engine.output(ACCEPTED_NODES).shape[0]
        self._cache = {(layer, part): self._allocate((1, self.capacity, *self.row_shape))
                       for layer in range(layers) for part in ("key", "value")}
        self._plan = BindingPlan.of(manifest.engine, self._address)
        self._staging, self._cuda = {}, None
        self.max_causal_tokens = CPU_PROMPT_CHUNK
        if self.device in ALIGNED_DEVICES:
            self.max_causal_tokens = STAGED_CAUSAL_TOKENS
            staging_rows = STAGED_CAUSAL_TOKENS + self._plan.path_length
            self._staging = {name: self._allocate((1, staging_rows, *self.row_shape)) for name, _ in self._plan.present}
            if self.device == "cuda":
                from .cuda_runtime import CudaRuntime

                self._cuda = CudaRuntime.load()
        self._binding = session.io_binding()
        # The weight-file pages a step maps in (embedding rows) are released after it, and held in the
        # page cache as base pages so that a row maps a page, not a large folio: see mapped_pages.
        self._mapped_pages = MappedPages.of_files([Path(artifact_dir) / name for name in manifest.files])
        self._mapped_pages.reread_in_small_pages()
        self.length = 0

    def _allocate(self, shape: tuple[int, ...]):
        if self.device == "cpu":
            return np.zeros(shape, dtype=self.kv_dtype)
        return self.ort.OrtValue.ortvalue_from_shape_and_type(shape, self.kv_dtype, "cuda", 0)

    def _address(self, name: str) -> int:
        return self._pointer(self._cache[kv_part(name)])

    def _pointer(self, buffer) -> int:
        return buffer.ctypes.data if self.device == "cpu" else buffer.data_ptr()

    def _copy_rows(self, destination: int, source: int, nbytes: int) -> None:
        if self._cuda is None:
            ctypes.memmove(destination, source, nbytes)
        else:  # ONNX Runtime has synchronised its streams when run returns; run() waits for these copies
            self._cuda.copy_on_device(destination, source, nbytes, 0)  # on the default stream

    def reset(self) -> None:
        self.length = 0

    def commit(self, rows: int) -> None:
        self.length += rows

    def close(self) -> None:
        self._mapped_pages = MappedPages([])  # the session's mappings go with it: never advise them after
        self._cache.clear()
        self._staging.clear()
        self._binding = self.engine = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.engine is None:
            raise ArtifactError("this backend was closed; load the artifact again")
        plan, binding = self._plan, self._binding
        plan.check_room(feeds, self.length, self.capacity)
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        symbols = plan.symbols(feeds, self.length)
        past_shape = (1, self.length, *self.row_shape)
        for name, address in plan.past:
            binding.bind_input(name, self.device, 0, self.kv_dtype, past_shape, address)
        host_inputs = [np.ascontiguousarray(feeds[spec.name], HOST_DTYPES[spec.dtype])
                       for spec in plan.host_inputs]  # alive until the run ends
        for spec, array in zip(plan.host_inputs, host_inputs):
            binding.bind_cpu_input(spec.name, array)
        present_shape = resolve_shape(plan.present_shape, symbols, "the engine's present.* outputs")
        offset = self.length * self.row_bytes
        staged = bool(self._staging) and any((address + offset) % ALIGNMENT for _, address in plan.present)
        for name, address in plan.present:
            target = self._pointer(self._staging[name]) if staged else address + offset
            binding.bind_output(name, self.device, 0, self.kv_dtype, present_shape, target)
        host_outputs = {}
        for spec in plan.host_outputs:
            shape = resolve_shape(spec.shape, symbols, f"engine output {spec.name}")
            host = host_outputs[spec.name] = np.empty(shape, dtype=HOST_DTYPES[spec.dtype])
            binding.bind_output(spec.name, "cpu", 0, host.dtype, shape, host.ctypes.data)
        self.engine.session.run_with_iobinding(binding)
        self._mapped_pages.release()
        if staged:
            rows = plan.rows_written(feeds) * self.row_bytes
            for name, address in plan.present:  # all rows; commit() keeps the accepted ones
                self._copy_rows(address + offset, self._pointer(self._staging[name]), rows)
            if self._cuda is not None:
                self._cuda.synchronize(0)
        return host_outputs


def _refuse_kv_dtype(dtype: str):
    raise ArtifactError(
        f"this artifact's KV cache is {dtype}, which ONNX Runtime's Python bindings cannot hold; "
        "run it with the TensorRT backend (`--backend tensorrt`), or rebuild with --dtype fp16 or fp32"
    )


def session_signature(session) -> list[TensorSpec]:
    """The session's inputs and outputs as manifest TensorSpecs (``tensor(float16)`` -> ``float16``)."""
    return [TensorSpec(value.name, value.type.removeprefix("tensor(").removesuffix(")"),
                       tuple(dim if isinstance(dim, (int, str)) else "?" for dim in value.shape))
            for value in [*session.get_inputs(), *session.get_outputs()]]


def check_engine_metadata(session, manifest: Manifest) -> None:
    """The tree and context length baked into the engine must be the manifest's."""
    metadata = session.get_modelmeta().custom_metadata_map
    try:
        tree = [list(path) for path in json.loads(metadata[TREE_METADATA])]
        copy_nodes = int(metadata[COPY_NODES_METADATA])
        max_seq_len = int(metadata[MAX_SEQ_LEN_METADATA])
    except (KeyError, ValueError, TypeError):
        raise ArtifactError(f"{manifest.engine.file} lacks the tree and context length hydra-export records in "
                            "every engine; rebuild the artifact") from None
    baked = (tree, copy_nodes, max_seq_len)
    if baked != (manifest.tree_choices, manifest.tree.copy_nodes, manifest.max_seq_len):
        raise ArtifactError(f"manifest.json's tree, copy chain or max_seq_len ({len(manifest.tree_choices) + 1} "
                            f"nodes, {manifest.tree.copy_nodes}, {manifest.max_seq_len}) is not the one baked into "
                            f"{manifest.engine.file} ({len(tree) + 1} nodes, {copy_nodes}, {max_seq_len}); "
                            "the artifact was edited: rebuild it")
