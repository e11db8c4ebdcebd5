"""What a step costs by the rows it verifies, on this machine: the input of `tree-search --step-costs`.

    python3 scripts/row_cost.py artifacts/smollm2 --context 300 > step_costs.json

Caches a random prompt of ``--context`` tokens in the artifact's engine, then times engine calls
that verify r = 1 .. N + C rows (the first min(r, N) drafted nodes, the rest from the copy chain;
nothing committed, so every call sees the same cache), round-robin so that a drift of the machine
touches every r alike, and prints JSON: the median milliseconds per r, ``step_costs`` (each as a
fraction of the one-row call) and ``row_cost``, the least-squares cost of one more row (what
tree-search charges past the measured rows). Run it on quiet cores.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from hydra_runtime.engine import COPY_TOKENS, INPUT_IDS, TREE_TOKENS
from hydra_runtime.generator import Generator
from hydra_runtime.sampling import greedy_feeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--context", type=int, default=300, help="cached tokens before the timed calls")
    parser.add_argument("--calls", type=int, default=30, help="timed calls per row count (after 5 warm-up rounds)")
    args = parser.parse_args()

    generator = Generator.load(args.artifact, verify_checksums=False)
    backend, tree = generator.backend, generator.tree
    feeds = greedy_feeds(tree.num_verified)
    rng = np.random.default_rng(0)
    vocab = generator.manifest.base_model.vocab_size
    prompt = rng.integers(0, vocab, args.context).astype(np.int64)
    backend.reset()
    backend.run({INPUT_IDS: prompt[:-1], TREE_TOKENS: prompt[-1:], COPY_TOKENS: np.zeros(0, np.int64), **feeds})
    backend.commit(args.context)

    shapes = [(min(r, tree.num_nodes), r - min(r, tree.num_nodes)) for r in range(1, tree.num_verified + 1)]
    times: dict[tuple[int, int], list[float]] = {shape: [] for shape in shapes}
    for round_ in range(5 + args.calls):  # the first 5 rounds warm up
        for n, c in shapes:
            call = {INPUT_IDS: np.zeros(0, np.int64), TREE_TOKENS: rng.integers(0, vocab, n).astype(np.int64),
                    COPY_TOKENS: rng.integers(0, vocab, c).astype(np.int64), **feeds}
            start = time.perf_counter()
            backend.run(call)
            if round_ >= 5:
                times[(n, c)].append(time.perf_counter() - start)
    milliseconds = [1000 * float(np.median(times[shape])) for shape in shapes]  # [r - 1]
    rows = np.arange(1, len(shapes) + 1, dtype=float)
    slope, intercept = np.polyfit(rows, np.array(milliseconds), 1)  # ms = intercept + slope * rows
    print(json.dumps({"artifact": args.artifact, "context": args.context, "backend": backend.name,
                      "milliseconds_per_call": {f"{n}+{c}": round(ms, 2) for (n, c), ms in zip(shapes, milliseconds)},
                      "step_costs": [round(max(ms / milliseconds[0], 1.0), 4) for ms in milliseconds],
                      "milliseconds_per_row": round(float(slope), 3),
                      "row_cost": round(float(slope / (intercept + slope)), 4)}, indent=1))


if __name__ == "__main__":
    main()
