"""Kept for the commands in BENCHMARKS.md; the same as `hydra-export step-costs` (same options).

    python3 scripts/row_cost.py artifacts/smollm2 --context 300 > step_costs.json
"""

import sys

from hydra_export.cli import run

if __name__ == "__main__":
    sys.argv = ["hydra-export", "step-costs", *sys.argv[1:]]
    run()
