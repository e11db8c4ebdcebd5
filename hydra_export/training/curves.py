"""Learning curves from training logs: accepted length and per-head top-1 against training tokens."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import HydraExportError
from .trainer import LOG_FILE, PROBE_TREE


def read_log(heads_dir: Path) -> dict:
    path = Path(heads_dir) / LOG_FILE
    if not path.is_file():
        raise HydraExportError(f"{path} not found; it is written when `hydra-export train` finishes")
    return json.loads(path.read_text())


def plot_learning_curves(heads_dirs: list[Path], out_path: Path) -> dict:
    """One line per heads directory; returns the points plotted (tokens, accepted length, top-1 of head 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    points = {}
    for heads_dir in heads_dirs:
        log = read_log(heads_dir)
        label = log["recipe"]["kind"]
        tokens = [entry["tokens"] for entry in log["log"]]
        accepted = [entry[f"mean_accepted_length_{PROBE_TREE}"] for entry in log["log"]]
        top1 = [entry["top1"][0] for entry in log["log"]]
        left.plot(tokens, accepted, marker="o", label=label)
        right.plot(tokens, top1, marker="o", label=label)
        points[label] = {"tokens": tokens, "mean_accepted_length": accepted, "head1_top1": top1}
    left.set_xlabel("training tokens (rows of head 1)")
    left.set_ylabel(f"mean accepted length ({PROBE_TREE}, held-out prompts)")
    left.set_title("Accepted tokens per step while training")
    right.set_xlabel("training tokens (rows of head 1)")
    right.set_ylabel("head 1 top-1 agreement with the base model")
    right.set_title("Held-out top-1 of the first head")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(out_path, dpi=110)
    plt.close(figure)
    return points
