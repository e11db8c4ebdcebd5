"""`hydra-export build`: base model + heads + tree -> an artifact directory.

Everything is written to a staging directory beside the target and renamed into place
only when complete, so DIR either holds a whole artifact or nothing new.
"""

from __future__ import annotations

import copy
import json
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from hydra_runtime.manifest import FORMAT_VERSION, MANIFEST_FILE, sha256_of
from hydra_runtime.tree import TreeBuffers

from . import __version__
from .base_model import BaseModel
from .errors import HydraExportError
from .heads import DraftHeads
from .heads.checkpoint import save_heads
from .tensorrt_build import TensorRTOptions

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NUMPY_DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
TARGETS = ("onnx", "tensorrt")
HEADS_SUBDIR = "heads"


@dataclass(frozen=True)
class BuildOptions:
    tree_name: str  # preset name or file it came from (identity only)
    dtype: str = "fp32"
    max_seq_len: int = 2048
    target: str = "onnx"
    force: bool = False
    sampling: bool = True  # also build the *_sample graphs (temperature > 0)
    tensorrt: TensorRTOptions = TensorRTOptions()  # used by target "tensorrt"


def build_artifact(
    base: BaseModel, heads: DraftHeads, tree: TreeBuffers, out_dir: Path, options: BuildOptions, progress=None
) -> Path:
    """Trace, export and write the artifact. ``progress(description)`` is called per stage."""
    from .export.graph_specs import build_graph_specs
    from .export.onnx_export import export_graph, save_with_shared_weights

    report = progress or (lambda description: None)
    out_dir = Path(out_dir)
    _check_options(base, heads, tree, out_dir, options)
    dtype = DTYPES[options.dtype]
    if dtype != base.model.dtype:  # trace copies, leaving the caller's modules as they were
        base = BaseModel(copy.deepcopy(base.model).to(dtype), base.tokenizer, base.architecture, base.name)
        heads = copy.deepcopy(heads).to(dtype)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    try:
        with tempfile.TemporaryDirectory() as scratch:
            specs = build_graph_specs(base, heads, tree, options.max_seq_len, dtype, sampling=options.sampling)
            models = {}
            for spec in specs:
                report(f"trace {spec.name} graph")
                models[spec.name] = export_graph(spec, Path(scratch))
            report("write graphs and shared weights")
            save_with_shared_weights(models, staging)
        report("write tokenizer, heads and manifest")
        if base.tokenizer is None:
            raise HydraExportError("the base model has no tokenizer files; an artifact needs tokenizer.json")
        base.tokenizer.save_pretrained(staging)
        save_heads(heads, staging / HEADS_SUBDIR)
        manifest = _manifest(base, heads, tree, options, specs, models)
        if options.target == "tensorrt":
            from .tensorrt_build import build_plans

            manifest["tensorrt"] = build_plans(staging, manifest, options.tensorrt, report)
        manifest["files"] = {str(p.relative_to(staging)): sha256_of(p)
                             for p in sorted(staging.rglob("*")) if p.is_file()}
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


def _check_options(base, heads, tree, out_dir: Path, options: BuildOptions) -> None:
    if out_dir.exists() and not options.force:
        raise HydraExportError(f"{out_dir} already exists; pass --force to replace it, or choose another -o")
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


def _tensor_signature(values) -> list[dict]:
    from onnx import TensorProto

    signature = []
    for value in values:
        tensor_type = value.type.tensor_type
        shape = [dim.dim_param or dim.dim_value for dim in tensor_type.shape.dim]
        signature.append({"name": value.name, "dtype": TensorProto.DataType.Name(tensor_type.elem_type).lower(), "shape": shape})
    return signature


def _eos_token_ids(base: BaseModel) -> list[int]:
    ids = set()
    for source in (base.model.generation_config, base.config):
        value = getattr(source, "eos_token_id", None)
        ids.update([value] if isinstance(value, int) else list(value or []))
    if base.tokenizer is not None and base.tokenizer.eos_token_id is not None:
        ids.add(int(base.tokenizer.eos_token_id))
    return sorted(ids)


def _manifest(base, heads, tree, options, specs, models) -> dict:
    """Everything but the files' checksums, which come last."""
    import onnx
    import onnxscript
    import transformers

    decoder_spec = next(spec for spec in specs if spec.name == "step").module.decoder
    return {
        "format_version": FORMAT_VERSION,
        "target": options.target,
        "dtype": options.dtype,
        "max_seq_len": options.max_seq_len,
        "sampling": options.sampling,
        "base_model": {
            "name": base.name,
            "model_type": base.config.model_type,
            "num_layers": base.config.num_hidden_layers,
            "hidden_size": base.config.hidden_size,
            "vocab_size": base.config.vocab_size,
        },
        "heads": heads.config.to_dict() | {"directory": HEADS_SUBDIR},
        "tree": {"name": options.tree_name, "num_nodes": tree.num_nodes, "depth": tree.max_depth,
                 "choices": tree.choices_as_lists()},
        "kv_cache": {
            "layout": "[batch=1, sequence, kv_heads, head_dim]",
            "num_layers": decoder_spec.num_layers + (1 if heads.has_context_layer else 0),
            "kv_heads": decoder_spec.num_kv_heads,
            "head_dim": decoder_spec.head_dim,
            "dtype": NUMPY_DTYPE_NAMES[options.dtype],
        },
        "tokenizer": {"eos_token_ids": _eos_token_ids(base)},
        "graphs": {
            name: {
                "file": f"{name}.onnx",
                "inputs": _tensor_signature(model.graph.input),
                "outputs": _tensor_signature(model.graph.output),
            }
            for name, model in models.items()
        },
        "toolchain": {
            "hydra_export": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__,
            "python": platform.python_version(),
            "opset": 18,
        },
    }
