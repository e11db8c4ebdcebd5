"""`hydra-export build`: base model + heads + tree -> an artifact directory.

The engine graph is traced once, in the target dtype, and its weights are streamed into
``weights.bin`` from the modules' own tensors, so a build holds the weights once. Every
file is written to a staging directory beside the target and moved into place only when
complete (atomic_output), so DIR either holds a whole artifact or nothing new.
"""

from __future__ import annotations

import copy
import platform
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from hydra_runtime.engine import PAST_PREFIX
from hydra_runtime.manifest import (
    MANIFEST_FILE,
    BaseModelInfo,
    GraphEntry,
    KvCache,
    Manifest,
    TensorSpec,
    TreeInfo,
    sha256_of,
)
from hydra_runtime.tree import TreeBuffers

from . import __version__
from .atomic_output import check_replaceable, discard, new_staging, publish
from .base_model import BaseModel
from .errors import HydraExportError
from .heads import DraftHeads
from .heads.checkpoint import save_heads
from .heads.in_artifact import engine_held_tensors, write_index
from .tensorrt_build import TensorRTOptions

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NUMPY_DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
TARGETS = ("onnx", "tensorrt")
DEFAULT_TREE = "tree16"  # when the heads ship no tree.json grown for them
DEFAULT_COPY_NODES = 4  # copy chain of a tree that names none (a preset, or a plain list of choices)
HEADS_SUBDIR = "heads"
BUILD_STAGES = 5  # load base model, load heads, trace, write weights, write the rest (+1 for TensorRT)


@dataclass(frozen=True)
class BuildOptions:
    tree_name: str  # preset name or file it came from (identity only)
    dtype: str | None = None  # None: default_dtype(target)
    max_seq_len: int = 2048
    target: str = "onnx"
    force: bool = False  # replace an existing artifact at the output path (never anything else)
    tensorrt: TensorRTOptions = TensorRTOptions()  # used by target "tensorrt"

    @property
    def resolved_dtype(self) -> str:
        return self.dtype or default_dtype(self.target)


def default_dtype(target: str) -> str:
    """fp32 for ONNX Runtime; for TensorRT, whose strongly typed networks take the graph's types,
    bf16 where the GPU has it, else fp16 (asks the GPU: a TensorRT build needs one anyway)."""
    if target != "tensorrt":
        return "fp32"
    from .tensorrt_build import default_tensorrt_dtype

    return default_tensorrt_dtype()


def default_tree(heads_dir: Path | None) -> str:
    """Heads may ship the tree tree-search grew for them (tree.json); otherwise DEFAULT_TREE."""
    grown = Path(heads_dir) / "tree.json" if heads_dir else None
    return str(grown) if grown is not None and grown.is_file() else DEFAULT_TREE


def is_artifact(path: Path) -> bool:
    """Whether ``path`` holds one of our artifacts (what --force may replace)."""
    return (Path(path) / MANIFEST_FILE).is_file() and b'"format_version"' in (Path(path) / MANIFEST_FILE).read_bytes()


def check_output(out_dir: Path, force: bool) -> None:
    check_replaceable(Path(out_dir), force, is_artifact, "a hydra-export artifact")


def build_artifact(
    base: BaseModel, heads: DraftHeads, tree: TreeBuffers, out_dir: Path, options: BuildOptions, progress=None
) -> Path:
    """Trace, export and write the artifact. ``progress(description)`` is called per stage,
    ``progress(description, done, total)`` while weights are written.

    Modules not already in the target dtype are converted on copies (the caller's are left
    as they were); load them in the target dtype to build at the cost of the weights.
    """
    from .export.graph_specs import build_engine_spec
    from .export.onnx_export import WEIGHTS_FILE, export_graph

    report = progress or (lambda description, *done_total: None)
    out_dir = Path(out_dir)
    options = replace(options, dtype=options.resolved_dtype)
    _check_options(base, heads, tree, out_dir, options)
    dtype = DTYPES[options.dtype]
    if dtype != base.model.dtype:
        base = BaseModel(copy.deepcopy(base.model).to(dtype), base.tokenizer, base.architecture, base.name)
    if any(parameter.dtype != dtype for parameter in heads.parameters()):
        heads = copy.deepcopy(heads).to(dtype)
    if base.tokenizer is None:
        raise HydraExportError("the base model has no tokenizer files; an artifact needs tokenizer.json")

    staging = new_staging(out_dir)
    weights_writer = None
    try:
        report("trace the engine graph")
        spec = build_engine_spec(base, heads, tree, options.max_seq_len, dtype)
        exported = export_graph(spec, staging, progress=lambda done, total: report("write weights", done, total),
                                share_tied=options.target == "onnx" and options.dtype == "fp32")
        model, weights_writer = exported.model, exported.weights
        report("write tokenizer, heads and manifest")
        base.tokenizer.save_pretrained(staging)
        held = engine_held_tensors(heads, spec.module, model)  # stored once, in the engine's weights
        save_heads(heads, staging / HEADS_SUBDIR, dtype=_lossless_storage_dtype(heads), stored_elsewhere=frozenset(held))
        write_index(staging / HEADS_SUBDIR, engine_file=f"{spec.name}.onnx", index=held)
        manifest = _manifest(base, heads, tree, options, spec, model)
        if options.target == "tensorrt":
            from .tensorrt_build import build_plan

            manifest = replace(manifest, tensorrt=build_plan(staging, manifest, options.tensorrt, report))
        weights = staging / WEIGHTS_FILE
        files = {str(p.relative_to(staging)): weights_writer.hexdigest(p) if p == weights else sha256_of(p)
                 for p in sorted(staging.rglob("*")) if p.is_file() and p.name != ".hydra-export-staging"}
        replace(manifest, files=files).write(staging)
        publish(staging, out_dir)
    finally:
        if weights_writer is not None:
            weights_writer.close()
        discard(staging)
    return out_dir


def _lossless_storage_dtype(heads: DraftHeads) -> torch.dtype | None:
    """fp16 when every head tensor survives the round trip (shipped heads are fp16), else as is:
    the heads copy `verify` reads then costs half, and the artifact stays near the weights' size."""
    exact = all(not p.is_floating_point() or torch.equal(p, p.half().to(p.dtype)) for p in heads.state_dict().values())
    return torch.float16 if exact else None


def _check_options(base, heads, tree, out_dir: Path, options: BuildOptions) -> None:
    check_output(out_dir, options.force)
    if options.dtype not in DTYPES:
        raise HydraExportError(f"unknown dtype {options.dtype!r}; choose one of {', '.join(DTYPES)}")
    if options.target not in TARGETS:
        raise HydraExportError(f"unknown target {options.target!r}; choose one of {', '.join(TARGETS)}")
    if options.target == "tensorrt":
        from .tensorrt_build import check_tensorrt_available

        check_tensorrt_available()
    if not 2 <= options.max_seq_len <= base.max_seq_len:
        raise HydraExportError(
            f"--max-seq-len {options.max_seq_len} is outside 2..{base.max_seq_len} (the model's context length)"
        )
    if tree.max_depth > heads.config.num_heads:
        raise HydraExportError(
            f"the tree is {tree.max_depth} deep but the heads draft only {heads.config.num_heads} tokens; "
            "choose a shallower tree"
        )


def _tensor_specs(values) -> tuple[TensorSpec, ...]:
    from onnx import TensorProto

    specs = []
    for value in values:
        tensor_type = value.type.tensor_type
        shape = tuple(dim.dim_param or dim.dim_value for dim in tensor_type.shape.dim)
        specs.append(TensorSpec(value.name, TensorProto.DataType.Name(tensor_type.elem_type).lower(), shape))
    return tuple(specs)


def _eos_token_ids(base: BaseModel) -> tuple[int, ...]:
    ids = set()
    for source in (base.model.generation_config, base.config):
        value = getattr(source, "eos_token_id", None)
        ids.update([value] if isinstance(value, int) else list(value or []))
    if base.tokenizer is not None and base.tokenizer.eos_token_id is not None:
        ids.add(int(base.tokenizer.eos_token_id))
    return tuple(sorted(ids))


def _manifest(base, heads, tree, options, spec, model) -> Manifest:
    """Everything but the files' checksums, which come last."""
    import onnx
    import onnxscript
    import transformers

    from .export.onnx_export import OPSET

    engine = GraphEntry(file=f"{spec.name}.onnx", inputs=_tensor_specs(model.graph.input),
                        outputs=_tensor_specs(model.graph.output))
    past = [entry for entry in engine.inputs if entry.name.startswith(PAST_PREFIX)]
    return Manifest(
        target=options.target,
        dtype=options.dtype,
        max_seq_len=options.max_seq_len,
        base_model=BaseModelInfo(name=base.name, model_type=base.config.model_type,
                                 num_layers=base.config.num_hidden_layers, hidden_size=base.config.hidden_size,
                                 vocab_size=base.config.vocab_size),
        heads=heads.config.to_dict() | {"directory": HEADS_SUBDIR},
        tree=TreeInfo(name=options.tree_name, choices=tuple(tree.choices), num_nodes=tree.num_nodes,
                      depth=tree.max_depth, copy_nodes=tree.copy_nodes),
        kv_cache=KvCache(num_layers=len(past) // 2, kv_heads=past[0].shape[2], head_dim=past[0].shape[3],
                         dtype=NUMPY_DTYPE_NAMES[options.dtype]),
        eos_token_ids=_eos_token_ids(base),
        engine=engine,
        toolchain={
            "hydra_export": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__,
            "python": platform.python_version(),
            "opset": OPSET,
        },
    )
