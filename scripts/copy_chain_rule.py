"""How much of the copy chain a step should send: CopyDrafts' rule scored by the decode simulator.

    python3 scripts/copy_chain_rule.py --prompts data/sharegpt_prompts.jsonl --limit 40 --step-costs step_costs.json

For the shipped heads and tree's drafted nodes, each chain length C and each rule (``n`` chain
nodes per token of agreement behind the lookup's match; ``whole``: all C whenever there is a
match), prints JSON: simulated accepted length, mean verified rows, and the modelled speedup over
autoregressive decoding for the step costs measured on your machine (``--step-costs``: the JSON of
``hydra-export step-costs``), or for one more verified row costing ``--row-cost`` of a one-token step.
Tune on prompts that are not your benchmark's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hydra_export.base_model import load_base_model
from hydra_export.heads.reference_formats import load_heads
from hydra_export.shipped_heads import shipped_heads_dir
from hydra_export.training.tree_planning import traces_for_prompts
from hydra_runtime.decode_simulator import simulate
from hydra_runtime.step_costs import StepCosts
from hydra_runtime.tree import TreeBuffers

MODEL = "smollm2-135m-instruct"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=Path, required=True, help="tuning prompts, jsonl (MT-Bench format)")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--row-cost", type=float, default=0.074)
    parser.add_argument("--step-costs", type=Path, help="hydra-export step-costs' JSON (overrides --row-cost)")
    parser.add_argument("--chains", default="8,16", help="comma-separated chain lengths C")
    args = parser.parse_args()
    costs = StepCosts.from_file(args.step_costs) if args.step_costs else StepCosts.linear(args.row_cost)

    base = load_base_model(MODEL)
    heads_dir = shipped_heads_dir(MODEL)
    heads = load_heads(heads_dir, base.config)
    shipped = TreeBuffers.from_spec(heads_dir / "tree.json")
    traces = traces_for_prompts(base, heads, MODEL, args.prompts, args.limit, 256, lambda stage, done, total: None)
    rows = []
    for chain in (int(c) for c in args.chains.split(",")):
        tree = TreeBuffers.from_choices(shipped.choices, copy_nodes=chain)
        for rule in (1, 2, 3, 4, "whole"):
            run = simulate(tree, traces, chain if rule == "whole" else rule)
            rows.append({"copy_nodes": chain, "nodes_per_agreed_token": rule,
                         "simulated_accepted_length": round(run.mean_accepted_length, 4),
                         "mean_verified_rows": round(run.mean_verified_rows, 3),
                         "modelled_speedup": round(run.modelled_speedup(costs), 4)})
    print(json.dumps({"prompts": str(args.prompts), "limit": args.limit,
                      "step_costs": costs.as_dict(),
                      "drafted_choices": [list(c) for c in shipped.choices], "rules": rows}, indent=1))


if __name__ == "__main__":
    main()
