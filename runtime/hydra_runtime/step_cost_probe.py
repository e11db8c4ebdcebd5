"""Timing an artifact's engine by the rows a call verifies: the measured StepCosts of this machine.

A random prompt of ``context`` tokens is cached, then calls verifying r = 1 .. N + C rows (the
first min(r, N) drafted nodes, the rest from the copy chain; nothing committed, so every call
sees the same cache) are timed round-robin, so that a drift of the machine touches every r
alike. Run it on quiet cores: anything else running is measured with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from .backends.decode_backend import DecodeBackend
from .decode_loop import NO_COPY
from .engine import COPY_TOKENS, INPUT_IDS, TREE_TOKENS
from .errors import GenerationInputError
from .sampling import greedy_feeds
from .tree import TreeBuffers

WARM_UP_ROUNDS = 5


def measure_step_costs(backend: DecodeBackend, tree: TreeBuffers, vocab_size: int, max_seq_len: int,
                       context: int = 300, calls: int = 30,
                       advance: Callable[[int], None] = lambda rounds: None) -> dict:
    """JSON-ready: the median milliseconds of each row count's call, ``step_costs`` (each over the
    one-row call: StepCosts.measured) and ``row_cost``, the least-squares cost of one more row as
    a fraction of a one-row call (what StepCosts charges past the measured rows).
    ``advance(1)`` after each round of WARM_UP_ROUNDS + ``calls``."""
    room = max_seq_len - tree.num_verified - 1
    if not 2 <= context <= room:
        raise GenerationInputError(f"--context {context} must be 2..{room}: the cached tokens plus the "
                                   f"{tree.num_verified} verified rows must fit the artifact's {max_seq_len} positions")
    if calls < 1:
        raise GenerationInputError(f"--calls must be at least 1, got {calls}")
    feeds = greedy_feeds(tree.num_verified)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, vocab_size, context).astype(np.int64)
    backend.reset()
    backend.run({INPUT_IDS: prompt[:-1], TREE_TOKENS: prompt[-1:], COPY_TOKENS: NO_COPY, **feeds})
    backend.commit(context)

    shapes = [(min(r, tree.num_nodes), r - min(r, tree.num_nodes)) for r in range(1, tree.num_verified + 1)]
    times: dict[tuple[int, int], list[float]] = {shape: [] for shape in shapes}
    for round_ in range(WARM_UP_ROUNDS + calls):
        for n, c in shapes:
            call = {INPUT_IDS: np.zeros(0, np.int64), TREE_TOKENS: rng.integers(0, vocab_size, n).astype(np.int64),
                    COPY_TOKENS: rng.integers(0, vocab_size, c).astype(np.int64), **feeds}
            start = time.perf_counter()
            backend.run(call)
            if round_ >= WARM_UP_ROUNDS:
                times[(n, c)].append(time.perf_counter() - start)
        advance(1)
    milliseconds = [1000 * float(np.median(times[shape])) for shape in shapes]  # [r - 1]
    rows = np.arange(1, len(shapes) + 1, dtype=float)
    slope, intercept = np.polyfit(rows, np.array(milliseconds), 1) if len(shapes) > 1 else (0.0, milliseconds[0])
    return {"context": context, "backend": backend.name,
            "milliseconds_per_call": {f"{n}+{c}": round(ms, 2) for (n, c), ms in zip(shapes, milliseconds)},
            "step_costs": [round(max(ms / milliseconds[0], 1.0), 4) for ms in milliseconds],
            "milliseconds_per_row": round(float(slope), 3),
            "row_cost": round(max(float(slope / (intercept + slope)), 0.0), 4)}
