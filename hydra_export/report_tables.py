"""What `inspect` and `verify` show: rich renderables built from a manifest or a verify report."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from rich.text import Text

from hydra_runtime.backends.decode_backend import is_kv
from hydra_runtime.manifest import Manifest, TensorSpec
from hydra_runtime.tree import TreeBuffers

from .output_comparison import OutputComparison

MAX_TREE_LINES = 24  # deeper trees are summarised per depth beyond this


def inspect_view(artifact: Path, manifest: Manifest) -> list:
    """Header lines, the engine's signature table, and the tree (drawn, or per depth when large)."""
    heads = manifest.heads
    lines = [
        f"{artifact}  format v{manifest.format_version}  target {manifest.target}  dtype {manifest.dtype}  "
        f"max_seq_len {manifest.max_seq_len}",
        f"base model: {manifest.base_model.name} ({manifest.base_model.model_type}, "
        f"{manifest.base_model.num_layers} layers)",
        f"heads: {heads.get('kind')} x{heads.get('num_heads')}, {heads.get('num_layers')} blocks each, "
        f"{'own' if heads.get('own_lm_head') else 'shared'} LM head",
        "one engine: prefill (input_ids + a one-root tree), tree steps (drafted nodes + the copy chain the "
        "runtime fills by prompt lookup) and autoregressive steps (a one-node tree), greedy (temperature 0) "
        "or sampled",
    ]
    title = manifest.engine.file
    if manifest.tensorrt is not None:
        trt = manifest.tensorrt
        plan = artifact / trt.plan
        size = plan.stat().st_size / 2**20 if plan.is_file() else 0.0
        lines.append(f"TensorRT {trt.version}: 1 plan, {size:.1f} MiB, optimization level "
                     f"{trt.optimization_level}, built in {trt.build_seconds:.0f} s")
        title += f" + {trt.plan}"
    table = Table(title=title)
    for column in ("", "name", "dtype", "shape"):
        table.add_column(column)
    for kind, values in (("in", manifest.engine.inputs), ("out", manifest.engine.outputs)):
        for name, dtype, shape in _abbreviate_kv(values):
            table.add_row(kind, name, dtype, shape)
    tree = manifest.tree_buffers()
    drawing = tree.drawing() if tree.num_nodes <= MAX_TREE_LINES else _depth_summary(tree)
    return [Text(line) for line in lines] + [table, Text(f"tree {manifest.tree.name}: {tree.num_nodes} drafted nodes, "
                                                         f"depth {tree.max_depth}, copy chain of "
                                                         f"{tree.copy_nodes}"), Text(drawing)]


def verify_table(report) -> Table:
    title = "ONNX Runtime vs PyTorch" + ("; [tensorrt] rows: TensorRT vs ONNX Runtime" if report.tensorrt_tokens else "")
    table = Table(title=f"{title} (tolerance {report.tolerance:g})")
    for column in ("call", "output", "max abs error", "max rel error", "ok"):
        table.add_column(column)
    for c in _collapse_kv(report.comparisons):
        ok = c.exact if c.exact is not None else c.max_abs_error <= report.tolerance
        error = ("exact" if c.exact else "DIFFERS") if c.exact is not None else f"{c.max_abs_error:.3g}"
        relative = "" if c.exact is not None else f"{c.max_rel_error:.3g}"
        table.add_row(c.graph, c.output, error, relative, Text("yes", "green") if ok else Text("NO", "red"))
    return table


def _depth_summary(tree: TreeBuffers) -> str:
    return "\n".join(f"depth {plan.depth}: {plan.child_stop - plan.child_start} nodes under "
                     f"{len(plan.parent_nodes)} parents, top-{plan.top_k}" for plan in tree.depth_plans)


def _collapse_kv(comparisons: list[OutputComparison]) -> list[OutputComparison]:
    """One row per call for all its K/V outputs (their worst errors), every other output as is."""
    rows, kv = [], {}
    for c in comparisons:
        if is_kv(c.output):
            kv.setdefault(c.graph, []).append(c)
        else:
            rows.append(c)
    for graph, group in kv.items():
        rows.append(OutputComparison(graph, f"present.* ({len(group)} K/V tensors)",
                                     max(c.max_abs_error for c in group), max(c.max_rel_error for c in group), None))
    return rows


def _abbreviate_kv(values: tuple[TensorSpec, ...]) -> list[tuple[str, str, str]]:
    """Table rows (name, dtype, shape); long per-layer K/V lists show their first and last layer only."""
    rows = [(v.name, v.dtype, str(list(v.shape))) for v in values]
    kv = [row for row in rows if is_kv(row[0])]
    if len(kv) <= 4:
        return rows
    others = [row for row in rows if not is_kv(row[0])]
    return others + kv[:2] + [(f"... {len(kv) - 4} more K/V tensors ...", "", "")] + kv[-2:]
