"""What the decode loop needs from an engine runtime: graphs that run against a resident KV cache.

A backend owns the engines and the KV cache, laid out per layer and part as
[1, max_seq_len, kv_heads, head_dim] (sequence-major), wherever the engines compute
(host memory for ONNX Runtime on CPU, device memory on a GPU). Each call binds the
cached prefix ``[:, :length]`` as the graph's ``past_key_values.*`` inputs and the
graph's ``present.*`` outputs to the rows right after it, so the engine writes its new
K/V rows straight into the cache: nothing K/V-sized crosses to the host, only the
host feeds (token ids, sampling scalars) and the small token outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import numpy as np

from ..engine import PAST_PREFIX, PAST_SEQUENCE, PRESENT_PREFIX
from ..errors import ArtifactError
from ..manifest import GraphEntry

# manifest dtype names (ONNX's, lower-cased) of the non-K/V inputs and outputs -> numpy
HOST_DTYPES = {"float": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "bool": np.bool_}


class DecodeBackend(Protocol):
    name: str  # "onnxruntime-cpu" | "onnxruntime-cuda" | "tensorrt"
    length: int  # rows of the KV cache that hold the sequence so far

    def warm_up(self, graph: str) -> None:
        """Load ``graph`` now, so an engine the runtime cannot load fails at start-up, not mid-request."""

    def reset(self) -> None:
        """Forget the cached sequence (before a new prompt)."""

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``graph`` on the cached prefix plus the host ``feeds``; returns its non-K/V outputs
        on the host. Its K/V rows are written after the prefix; ``commit`` keeps some of them."""

    def commit(self, rows: int) -> None:
        """Keep the first ``rows`` K/V rows the last ``run`` wrote (the accepted ones)."""


def kv_part(name: str) -> tuple[int, str]:
    """``past_key_values.3.value`` or ``present.3.value`` -> (3, "value")."""
    _, layer, part = name.rsplit(".", 2)
    return int(layer), part


def is_kv(name: str) -> bool:
    return name.startswith((PAST_PREFIX, PRESENT_PREFIX))


def resolve_shape(shape: list, symbols: dict[str, int], where: str) -> tuple[int, ...]:
    """A manifest shape with named symbolic dims -> concrete dims from ``symbols``."""
    try:
        return tuple(int(dim) if isinstance(dim, int) else symbols[dim] for dim in shape)
    except KeyError as missing:
        raise ArtifactError(f"{where} has a symbolic dimension {missing} this runtime cannot size; "
                            "rebuild the artifact with this version of hydra-export") from None


class BindingPlan(NamedTuple):
    """What one graph binds, worked out once per graph: its K/V tensors with the addresses of
    their cache buffers, and its host tensors. Per call only the past length and feeds change."""

    past: list[tuple[str, int]]  # past_key_values.* input, cache buffer address
    present: list[tuple[str, int]]  # present.* output, cache buffer address (rows go after the prefix)
    present_shape: list  # [1, rows, kv_heads, head_dim]; rows may be symbolic (the prompt length)
    host_inputs: list[dict]  # manifest specs of the inputs fed from the host
    host_outputs: list[dict]  # manifest specs of the outputs returned to the host

    @classmethod
    def of(cls, entry: GraphEntry, cache_address: Callable[[str], int]) -> BindingPlan:
        present = [spec for spec in entry.outputs if is_kv(spec["name"])]
        return cls(
            past=[(spec["name"], cache_address(spec["name"])) for spec in entry.inputs if is_kv(spec["name"])],
            present=[(spec["name"], cache_address(spec["name"])) for spec in present],
            present_shape=present[0]["shape"] if present else [],
            host_inputs=[spec for spec in entry.inputs if not is_kv(spec["name"])],
            host_outputs=[spec for spec in entry.outputs if not is_kv(spec["name"])],
        )

    def symbols(self, feeds: dict[str, np.ndarray], past_length: int) -> dict[str, int]:
        """Sizes of the graph's symbolic dims, read off the host feeds' shapes and the cache length."""
        symbols = {PAST_SEQUENCE: past_length}
        for spec in self.host_inputs:
            for dim, size in zip(spec["shape"], np.shape(feeds[spec["name"]])):
                if isinstance(dim, str):
                    symbols[dim] = int(size)
        return symbols
