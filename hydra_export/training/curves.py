"""Learning curves from training logs: accepted length and per-head top-1 against training tokens."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic_output import write_output_file
from ..errors import HydraExportError
from .trainer import LOG_FILE, PROBE_TREE


def read_log(heads_dir: Path) -> dict:
    path = Path(heads_dir) / LOG_FILE
    if not path.is_file():
        raise HydraExportError(f"{path} not found; it is written when `hydra-export train` finishes")
    return json.loads(path.read_text())


def plot_learning_curves(heads_dirs: list[Path], out_path: Path) -> dict:
    """Lines per heads directory; returns the points plotted (tokens, accepted lengths, top-1 of head 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    points = {}
    for heads_dir in heads_dirs:
        log = read_log(heads_dir)
        label = log["recipe"]["kind"]  # and the data size, so runs of one kind on more data get their own line
        if "train_sequences" in log:
            label = f"{label}, {log['train_sequences']} answers"
        tokens = [entry["tokens"] for entry in log["log"]]
        top1 = [entry["top1"][0] for entry in log["log"]]
        point = points[label] = {"tokens": tokens, "head1_top1": top1}
        if all("simulated_accepted_length" in entry for entry in log["log"]):
            # Held-out answers replayed on a tree, heads alone and with a copy chain (one line each).
            for tree in log["log"][0]["simulated_accepted_length"]:
                values = point[f"simulated_{tree}"] = [e["simulated_accepted_length"][tree] for e in log["log"]]
                left.plot(tokens, values, marker="o", linestyle="--" if "copy" in tree else "-",
                          label=f"{label}, {tree}")
        else:  # logs from before the simulator: the reference decoder's short probe
            accepted = point["mean_accepted_length"] = [e[f"mean_accepted_length_{PROBE_TREE}"] for e in log["log"]]
            left.plot(tokens, accepted, marker="o", label=f"{label}, {PROBE_TREE}")
        right.plot(tokens, top1, marker="o", label=label)
    left.set_xlabel("training tokens (rows of head 1, every epoch counted)")
    left.set_ylabel("mean accepted length (held-out answers)")
    left.set_title("Accepted tokens per step while training")
    right.set_xlabel("training tokens (rows of head 1)")
    right.set_ylabel("head 1 top-1 agreement with the base model")
    right.set_title("Held-out top-1 of the first head")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    write_output_file(out_path, lambda path: figure.savefig(path, dpi=110))
    plt.close(figure)
    return points
