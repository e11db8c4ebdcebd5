"""What the decode loop needs from an engine runtime: the engine, run against a resident KV cache.

A backend owns the engine and the KV cache, laid out per layer and part as
[1, capacity, kv_heads, head_dim] (sequence-major), wherever the engine computes (host
memory for ONNX Runtime on CPU, device memory on a GPU). Each call binds the cached
prefix ``[:, :length]`` as the engine's ``past_key_values.*`` inputs and its
``present.*`` outputs to the rows right after it, so the engine writes its new K/V rows
straight into the cache: nothing K/V-sized crosses to the host, only the host feeds
(token ids, sampling scalars) and the small token outputs.

The artifact is untrusted: a backend sizes the cache from the engine's own signature and
refuses an engine whose signature differs from the manifest's (``check_signature``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import numpy as np

from ..engine import (
    ACCEPTED_NODES,
    INPUT_IDS,
    NEW_TOKENS,
    PAST_PREFIX,
    PAST_SEQUENCE,
    PRESENT_PREFIX,
    PRESENT_SEQUENCE,
)
from ..errors import ArtifactError
from ..manifest import GraphEntry, Manifest, TensorSpec

# manifest dtype names (ONNX's, lower-cased) of the non-K/V inputs and outputs -> numpy
HOST_DTYPES = {"float": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "bool": np.bool_}
KV_ONNX_DTYPES = {"float32": "float", "float16": "float16", "bfloat16": "bfloat16"}
ALIGNMENT = 256  # bytes: GPU backends bind only addresses aligned to this (TensorRT requires it)
STAGED_CAUSAL_TOKENS = 512  # prompt tokens per call where present.* rows are staged: bounds the staging buffers


class DecodeBackend(Protocol):
    name: str  # "onnxruntime-cpu" | "onnxruntime-cuda" | "tensorrt"
    length: int  # rows of the KV cache that hold the sequence so far
    capacity: int  # rows each KV buffer holds
    max_causal_tokens: int | None  # prompt tokens one call may take (None: any); longer prompts are chunked

    def reset(self) -> None:
        """Forget the cached sequence (before a new prompt)."""

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the engine on the cached prefix plus the host ``feeds``; returns its non-K/V outputs
        on the host. Its K/V rows are written after the prefix; ``commit`` keeps some of them."""

    def commit(self, rows: int) -> None:
        """Keep the first ``rows`` K/V rows the last ``run`` wrote (the causal and accepted ones)."""

    def close(self) -> None:
        """Free the engine and the cache (device memory, streams); the backend is unusable after."""


def kv_part(name: str) -> tuple[int, str]:
    """``past_key_values.3.value`` or ``present.3.value`` -> (3, "value")."""
    _, layer, part = name.rsplit(".", 2)
    return int(layer), part


def is_kv(name: str) -> bool:
    return name.startswith((PAST_PREFIX, PRESENT_PREFIX))


def resolve_shape(shape: tuple, symbols: dict[str, int], where: str) -> tuple[int, ...]:
    """A manifest shape with named symbolic dims -> concrete dims from ``symbols``."""
    try:
        return tuple(int(dim) if isinstance(dim, int) else symbols[dim] for dim in shape)
    except KeyError as missing:
        raise ArtifactError(f"{where} has a symbolic dimension {missing} this runtime cannot size; "
                            "rebuild the artifact with this version of hydra-export") from None


def check_signature(manifest: Manifest, actual: list[TensorSpec], what: str) -> None:
    """Refuse an engine whose inputs/outputs (names, dtypes, static dims) differ from the manifest's,
    or whose K/V tensors do not match the manifest's kv_cache section; lists every mismatch."""
    expected = {spec.name: spec for spec in (*manifest.engine.inputs, *manifest.engine.outputs)}
    found = {spec.name: spec for spec in actual}
    problems = [f"{name} is missing from the engine" for name in expected.keys() - found.keys()]
    problems += [f"the engine has {name}, which the manifest does not list" for name in found.keys() - expected.keys()]
    kv = manifest.kv_cache
    for name in expected.keys() & found.keys():
        want, got = expected[name], found[name]
        if want.dtype != got.dtype:
            problems.append(f"{name} is {got.dtype} in the engine, {want.dtype} in the manifest")
        if len(want.shape) != len(got.shape) or any(
                isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(want.shape, got.shape)):
            problems.append(f"{name} has shape {list(got.shape)} in the engine, {list(want.shape)} in the manifest")
        if is_kv(name) and (tuple(got.shape[2:]) != (kv.kv_heads, kv.head_dim) or got.dtype != KV_ONNX_DTYPES.get(kv.dtype)):
            problems.append(f"{name} is {got.dtype} {list(got.shape)} in the engine but the manifest's kv_cache "
                            f"says {kv.dtype} rows of [{kv.kv_heads}, {kv.head_dim}]")
    layers = {kv_part(name)[0] for name in found if name.startswith(PAST_PREFIX)}
    if layers != set(range(kv.num_layers)):
        problems.append(f"the engine has K/V for {len(layers)} layers, the manifest's kv_cache {kv.num_layers}")
    if problems:
        raise ArtifactError(f"{what} does not match manifest.json: " + "; ".join(sorted(problems))
                            + ". The artifact is corrupted or edited: rebuild it")


class BindingPlan(NamedTuple):
    """What the engine binds, worked out once: its K/V tensors with the addresses of their cache
    buffers, and its host tensors. Per call only the past length and the feeds change."""

    past: list[tuple[str, int]]  # past_key_values.* input, cache buffer address
    present: list[tuple[str, int]]  # present.* output, cache buffer address (rows go after the prefix)
    present_shape: tuple  # [1, present_sequence, kv_heads, head_dim]
    host_inputs: list[TensorSpec]  # inputs fed from the host
    host_outputs: list[TensorSpec]  # outputs returned to the host
    path_length: int  # D+1: the accepted path rows every call writes after its causal rows

    @classmethod
    def of(cls, entry: GraphEntry, cache_address: Callable[[str], int]) -> BindingPlan:
        present = [spec for spec in entry.outputs if is_kv(spec.name)]
        accepted = next(spec for spec in entry.outputs if spec.name == ACCEPTED_NODES)
        return cls(
            past=[(spec.name, cache_address(spec.name)) for spec in entry.inputs if is_kv(spec.name)],
            present=[(spec.name, cache_address(spec.name)) for spec in present],
            present_shape=present[0].shape,
            host_inputs=[spec for spec in entry.inputs if not is_kv(spec.name)],
            host_outputs=[spec for spec in entry.outputs if not is_kv(spec.name)],
            path_length=int(accepted.shape[0]),
        )

    def symbols(self, feeds: dict[str, np.ndarray], past_length: int) -> dict[str, int]:
        """Sizes of the engine's symbolic dims, read off the host feeds' shapes and the cache length."""
        symbols = {PAST_SEQUENCE: past_length}
        for spec in self.host_inputs:
            for dim, size in zip(spec.shape, np.shape(feeds[spec.name])):
                if isinstance(dim, str):
                    symbols[dim] = int(size)
        symbols[PRESENT_SEQUENCE] = symbols[NEW_TOKENS] + self.path_length
        return symbols

    def check_room(self, feeds: dict[str, np.ndarray], past_length: int, capacity: int) -> None:
        """Refuse a call whose K/V rows would not fit the cache (decode() never makes one; a caller
        driving a backend directly might)."""
        if past_length + self.rows_written(feeds) > capacity:
            raise ArtifactError(
                f"this call would write {self.rows_written(feeds)} K/V rows after {past_length} cached ones, past "
                f"the cache's {capacity} rows; send fewer input_ids or call reset() (decode() keeps within it)")

    def rows_written(self, feeds: dict[str, np.ndarray]) -> int:
        """K/V rows a call writes after the prefix: its causal tokens, then the path rows."""
        return len(feeds[INPUT_IDS]) + self.path_length
