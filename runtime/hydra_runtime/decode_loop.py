"""The draft-verify-accept loop over a backend's engine (and the autoregressive baseline).

Per step the engine verifies the current tree and copy chain, accepts, and drafts the next
tree; its K/V rows land in the backend's resident cache, and the host only keeps the accepted
count of them, emits tokens, and looks up the next copy chain in the token history.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from .backends.decode_backend import DecodeBackend
from .copy_drafts import CopyDrafts
from .engine import ACCEPTED_COUNT, ACCEPTED_NODES, COPY_TOKENS, INPUT_IDS, NEXT_TREE_TOKENS, TREE_TOKENS
from .sampling import greedy_feeds
from .tree import TreeBuffers

NO_COPY = np.zeros(0, dtype=np.int64)  # [0]: no copy chain to verify
NO_COPY.setflags(write=False)


@dataclass
class DecodeStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    steps: int = 0  # engine calls after the prefill
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


def nodes_that_fit(depths: np.ndarray, room: int) -> int:
    """How many leading tree nodes sit at most ``room`` deep (nodes are sorted by depth)."""
    return int(np.searchsorted(depths, room, side="right"))


def decode(
    backend: DecodeBackend,
    prompt_ids: list[int],
    stop: StopRule,
    tree: TreeBuffers,
    speculative: bool = True,
    on_tokens: Callable[[list[int]], None] = lambda tokens: None,
    controls: Callable[[], dict[str, np.ndarray]] = dict,
) -> tuple[list[int], DecodeStats]:
    """Generate after ``prompt_ids`` with one engine call per step (see EngineGraph).

    The first call is the prefill: the prompt but its last token as causal tokens, the last
    token as the root of an N-node tree whose other nodes only size the first draft. Every
    later call sends the tree the previous one drafted and the copy chain CopyDrafts proposes
    from the history, both cut to the nodes whose positions fit in the context.
    ``speculative=False`` sends one-node trees and no chain: autoregressive decoding on the same
    engine, with no head run. ``controls()`` gives the sampling inputs of each call.
    ``tree``: the artifact's tree (the engine's).
    """
    stats = DecodeStats(prompt_tokens=len(prompt_ids))
    backend.reset()
    causal = np.asarray(prompt_ids[:-1], dtype=np.int64)  # [T]
    depths = tree.drafted_depths  # [N]
    drafts = np.full(tree.num_nodes if speculative else 1, prompt_ids[-1], dtype=np.int64)  # [n]
    copy = NO_COPY  # [c]: nothing to verify at prefill
    lookup = CopyDrafts(tree.copy_nodes, prompt_ids) if speculative and tree.copy_nodes else None
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
        if lookup is not None:
            lookup.extend(fresh)
        on_tokens(fresh)
        return bool(stats.stop_reason)

    start = time.perf_counter()
    limit = backend.max_causal_tokens
    chunk_feeds = {COPY_TOKENS: NO_COPY, **greedy_feeds(tree.num_verified)}  # nothing verified or sampled
    while limit is not None and len(causal) > limit:  # a long prompt, in chunks: each a one-node tree
        backend.run({INPUT_IDS: causal[:limit], TREE_TOKENS: causal[limit : limit + 1], **chunk_feeds})
        backend.commit(limit + 1)
        causal = causal[limit + 1 :]
    prefill = True
    while True:
        room = stop.max_seq_len - 1 - backend.length - len(causal)  # deepest node offset that fits
        drafts = drafts[: nodes_that_fit(depths[: len(drafts)], room)]
        copy = copy[: max(room, 0)]  # chain node k sits k + 1 deep
        out = backend.run({INPUT_IDS: causal, TREE_TOKENS: drafts, COPY_TOKENS: copy, **controls()})
        count = int(out[ACCEPTED_COUNT])
        backend.commit(len(causal) + count)
        verified = np.concatenate([drafts, copy])  # the engine's rows
        emitted = [*verified[out[ACCEPTED_NODES][1:count]], out[NEXT_TREE_TOKENS][0]]
        if prefill:
            stats.prefill_seconds = time.perf_counter() - start
            start, prefill = time.perf_counter(), False
        else:
            stats.steps += 1
            if len(verified) > 1:
                stats.accepted_lengths.append(len(emitted))
        causal, drafts = causal[:0], out[NEXT_TREE_TOKENS]
        if emit(emitted):
            break
        copy = lookup.propose() if lookup is not None else NO_COPY
    stats.decode_seconds = time.perf_counter() - start
    stats.new_tokens = len(generated)
    return generated, stats
