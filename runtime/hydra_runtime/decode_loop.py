"""The draft-verify-accept loop over a backend's graphs (and the autoregressive baseline).

Per step the fused step graph verifies the current tree, accepts, and drafts the next
tree; its K/V rows land in the backend's resident cache, and the host only keeps the
accepted count of them and emits tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from .backends.decode_backend import DecodeBackend


@dataclass
class DecodeStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    steps: int = 0  # engine calls after prefill
    accepted_lengths: list[int] = field(default_factory=list)  # tokens emitted per speculative step
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    stop_reason: str = ""

    @property
    def mean_accepted_length(self) -> float:
        return float(np.mean(self.accepted_lengths)) if self.accepted_lengths else 0.0

    @property
    def tokens_per_second(self) -> float:
        total = self.prefill_seconds + self.decode_seconds
        return self.new_tokens / total if total > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "steps": self.steps,
            "mean_accepted_length": round(self.mean_accepted_length, 4),
            "prefill_seconds": round(self.prefill_seconds, 4),
            "decode_seconds": round(self.decode_seconds, 4),
            "tokens_per_second": round(self.tokens_per_second, 3),
            "stop_reason": self.stop_reason,
        }


@dataclass(frozen=True)
class StopRule:
    max_new_tokens: int
    eos_token_ids: frozenset[int]
    max_seq_len: int
    prompt_tokens: int

    def reason(self, token: int, generated: int) -> str:
        if token in self.eos_token_ids:
            return "eos"
        if generated >= self.max_new_tokens:
            return "max_new_tokens"
        if self.prompt_tokens + generated >= self.max_seq_len:
            return "context"  # the sequence fills the context window
        return ""


@dataclass(frozen=True)
class GraphNames:
    prefill: str
    step: str | None  # None: autoregressive
    fallback: str  # the one-node step


def decode(
    backend: DecodeBackend,
    graphs: GraphNames,
    prompt_ids: list[int],
    stop: StopRule,
    tree_size: int,
    on_tokens: Callable[[list[int]], None] = lambda tokens: None,
    controls: Callable[[], dict[str, np.ndarray]] = dict,
) -> tuple[list[int], DecodeStats]:
    """Generate after ``prompt_ids``. ``graphs.step`` None means autoregressive.

    The fallback (the one-node autoregressive step) also finishes speculative runs once
    a whole tree no longer fits in the context. ``controls()`` gives the extra scalar
    inputs of every graph call (sampling settings and a fresh random number), if any.
    """
    stats = DecodeStats(prompt_tokens=len(prompt_ids))
    start = time.perf_counter()
    backend.reset()
    out = backend.run(graphs.prefill, {"input_ids": np.asarray(prompt_ids, dtype=np.int64), **controls()})
    backend.commit(len(prompt_ids))
    tree = out["tree_tokens"]
    stats.prefill_seconds = time.perf_counter() - start

    generated: list[int] = []

    def emit(tokens: Iterable[int]) -> bool:
        fresh = []
        for token in tokens:
            token = int(token)
            generated.append(token)
            fresh.append(token)
            stats.stop_reason = stop.reason(token, len(generated))
            if stats.stop_reason:
                break
        on_tokens(fresh)
        return bool(stats.stop_reason)

    start = time.perf_counter()
    done = emit(tree[:1])
    while not done:
        speculative = graphs.step is not None and backend.length + tree_size <= stop.max_seq_len
        tree_tokens = tree if speculative else tree[:1]
        out = backend.run(graphs.step if speculative else graphs.fallback, {"tree_tokens": tree_tokens, **controls()})
        count = int(out["accepted_count"])
        nodes = out["accepted_nodes"][:count]
        backend.commit(count)
        stats.steps += 1
        emitted = [*tree_tokens[nodes[1:]], out["next_tree_tokens"][0]]
        if speculative:
            stats.accepted_lengths.append(len(emitted))
        tree = out["next_tree_tokens"]
        done = emit(emitted)
    stats.decode_seconds = time.perf_counter() - start
    stats.new_tokens = len(generated)
    return generated, stats
