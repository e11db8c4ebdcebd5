"""What one more verified row costs on this machine: the input of `tree-search --row-cost`.

    python3 scripts/row_cost.py artifacts/smollm2 --context 300

Caches a random prompt of ``--context`` tokens in the artifact's engine, then times engine calls
that verify n drafted nodes + c chain nodes (nothing committed, so every call sees the same
cache) and prints JSON: the median milliseconds per (n, c), and the row cost fitted by least
squares, as a fraction of a one-node call. Run it on quiet cores.
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
    parser.add_argument("--calls", type=int, default=30, help="timed calls per shape (after 5 warm-up calls)")
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

    shapes = sorted({(1, 0), (tree.num_nodes, 0), *((tree.num_nodes, c) for c in range(2, tree.copy_nodes + 1, 2))})
    milliseconds = {}
    for n, c in shapes:
        times = []
        for _ in range(5 + args.calls):
            call = {INPUT_IDS: np.zeros(0, np.int64), TREE_TOKENS: rng.integers(0, vocab, n).astype(np.int64),
                    COPY_TOKENS: rng.integers(0, vocab, c).astype(np.int64), **feeds}
            start = time.perf_counter()
            backend.run(call)
            times.append(time.perf_counter() - start)
        milliseconds[f"{n}+{c}"] = round(1000 * float(np.median(times[5:])), 2)
    rows = np.array([n + c for n, c in shapes], dtype=float)
    slope, intercept = np.polyfit(rows, np.array(list(milliseconds.values())), 1)  # ms = intercept + slope * rows
    print(json.dumps({"artifact": args.artifact, "context": args.context, "backend": backend.name,
                      "milliseconds_per_call": milliseconds, "milliseconds_per_row": round(float(slope), 3),
                      "row_cost": round(float(slope / (intercept + slope)), 4)}, indent=1))


if __name__ == "__main__":
    main()
