"""Mean accepted length of several `hydra-export bench --json` reports side by side.

    python3 scripts/acceptance_table.py --plot out.png LABEL=REPORT.json ...

LABEL is "heads/tree" (e.g. "Hydra++/mc_sim_7b_63"). Prints a Markdown table (heads as
rows, trees as columns) and draws the same numbers as grouped bars.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read(pairs: list[str]) -> dict[tuple[str, str], dict]:
    table = {}
    for pair in pairs:
        label, path = pair.split("=", 1)
        heads, tree = label.split("/", 1)
        table[(heads, tree)] = json.loads(Path(path).read_text())["summary"]["hydra"]
    return table


def markdown(table: dict) -> str:
    heads = list(dict.fromkeys(h for h, _ in table))
    trees = list(dict.fromkeys(t for _, t in table))
    lines = ["| heads | " + " | ".join(f"`{t}`" for t in trees) + " |", "| --- |" + " ---: |" * len(trees)]
    for h in heads:
        cells = [f"{table[(h, t)]['mean_accepted_length']:.3f}" if (h, t) in table else "" for t in trees]
        lines.append(f"| {h} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(table: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    heads = list(dict.fromkeys(h for h, _ in table))
    trees = list(dict.fromkeys(t for _, t in table))
    figure, axes = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(trees)
    for i, tree in enumerate(trees):
        values = [table.get((h, tree), {}).get("mean_accepted_length", 0) for h in heads]
        bars = axes.bar(np.arange(len(heads)) + i * width, values, width, label=tree)
        axes.bar_label(bars, fmt="%.2f")
    axes.set_xticks(np.arange(len(heads)) + width * (len(trees) - 1) / 2, heads)
    axes.set_ylabel("mean accepted length (tokens / step)")
    axes.set_title("MT-Bench, 80 first turns, 256 new tokens, greedy")
    axes.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="LABEL=REPORT.json, LABEL as heads/tree")
    parser.add_argument("--plot", type=Path, help="write a grouped bar chart here")
    args = parser.parse_args()
    table = read(args.reports)
    print(markdown(table))
    if args.plot:
        plot(table, args.plot)


if __name__ == "__main__":
    main()
