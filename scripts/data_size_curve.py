"""Accepted length against the self-distilled data the heads trained on: issue #10's learning curve.

    python3 scripts/data_size_curve.py docs/benchmarks/data_size/points.json --plot accepted_vs_tokens.png

The points file lists measured runs (JSON):

    {"points": [{"heads": "Hydra++", "series": "stage 1, then 2 epochs on N answers",
                 "answer_tokens": 301922, "mc_sim_7b_63": 2.1187, "source": "BENCHMARKS.md I"}, ...]}

``mc_sim_7b_63`` is the heads-alone figure of
``hydra-export tree-search --prompts data/mt_bench.jsonl --limit 80 --heads DIR`` (its
``presets.mc_sim_7b_63["0"]``) for heads trained on ``answer_tokens`` of the base model's own
answer tokens. Prints a Markdown table (one row per point) and draws one line per heads kind
and series, the data on a log axis (where more data stops paying is a bend on it).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

BAR = 2.5  # issue #10: accepted length with heads alone on mc_sim_7b_63
REQUIRED = ("heads", "series", "answer_tokens", "mc_sim_7b_63", "source")


def read_points(path: Path) -> list[dict]:
    points = json.loads(path.read_text())["points"]
    for number, point in enumerate(points):
        missing = [key for key in REQUIRED if key not in point]
        if missing:
            raise SystemExit(f"{path}: point {number} lacks {', '.join(missing)}; every point needs "
                             f"{', '.join(REQUIRED)} (see this script's docstring)")
    return points


def markdown(points: list[dict]) -> str:
    lines = ["| heads | series | answer tokens | `mc_sim_7b_63`, heads alone | source |",
             "| --- | --- | ---: | ---: | --- |"]
    for p in points:
        cells = (p["heads"], p["series"], f"{p['answer_tokens']:,}", f"{p['mc_sim_7b_63']:.4f}", p["source"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(points: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[tuple[str, str], list[dict]] = {}
    for point in points:
        lines.setdefault((point["heads"], point["series"]), []).append(point)
    colours = {heads: f"C{i}" for i, heads in enumerate(dict.fromkeys(p["heads"] for p in points))}
    series_names = dict.fromkeys(p["series"] for p in points)
    styles = {series: ("-o", "--s", ":^", "-.d")[i % 4] for i, series in enumerate(series_names)}
    figure, axes = plt.subplots(figsize=(8.5, 4.5))
    for (heads, series), line in lines.items():
        line = sorted(line, key=lambda p: p["answer_tokens"])
        # Stage 1 (no self-distilled data) sits at the axis' left edge: a log axis has no zero.
        xs = [max(p["answer_tokens"], 50_000) / 1000 for p in line]
        axes.plot(xs, [p["mc_sim_7b_63"] for p in line], styles[series], color=colours[heads],
                  label=f"{heads}: {series}")
    axes.axhline(BAR, color="grey", linestyle=":", label=f"issue #10's bar ({BAR}, heads alone)")
    axes.set_xscale("log")
    ticks = [50, 100, 200, 400, 800]
    axes.set_xticks(ticks, [str(tick) for tick in ticks])
    axes.minorticks_off()
    axes.set_xlabel("self-distilled answer tokens trained on (thousands; stage 1 drawn at 50)")
    axes.set_ylabel("accepted tokens per step, mc_sim_7b_63, heads alone")
    axes.set_title("MT-Bench 80 x 256, decode simulator")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    image = io.BytesIO()
    figure.savefig(image, dpi=90, bbox_inches="tight")
    plt.close(figure)
    # A line plot has few colours: a 64-colour palette PNG is a third of the bytes (the tracked tree is kept small).
    from PIL import Image

    Image.open(image).convert("RGB").quantize(colors=64).save(out, format="PNG", optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("points", type=Path, help="the points file (JSON)")
    parser.add_argument("--plot", type=Path, help="write the curves here (PNG)")
    args = parser.parse_args()
    points = read_points(args.points)
    print(markdown(points))
    if args.plot:
        plot(points, args.plot)


if __name__ == "__main__":
    main()
