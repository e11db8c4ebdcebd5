"""Loading checkpoints written by the reference repositories.

- zankner/Hydra: ``hydra_lm_head.pt`` + ``config.json`` (``hydra_num_heads``,
  ``hydra_num_layers``, ``hydra_head_arch`` = "mlp" | "prefix-mlp", ``grounded_heads``).
  Each head is ``Sequential(Dropout, ResBlock, Dropout, ResBlock, ...)`` so blocks sit at
  odd indices; the blocks after the first are one module repeated; LM heads are
  ``Sequential(Dropout, Linear(bias=True))``. The prefix-mlp layer is a one-layer LlamaModel
  whose embedding table is never used: we drop it on purpose.
- FasterDecoding/Medusa: ``medusa_lm_head.pt`` + ``config.json`` (``medusa_num_heads``,
  ``medusa_num_layers``); head i is ``Sequential(ResBlock * n, Linear(bias=False))`` with
  the n blocks one module.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import HeadsCheckpointError
from .checkpoint import load_native_heads, load_tensors_strict, CONFIG_FILE
from .config import HeadsConfig
from .draft_heads import DraftHeads
from .registry import build_heads

HYDRA_WEIGHTS = "hydra_lm_head.pt"
MEDUSA_WEIGHTS = "medusa_lm_head.pt"
HYDRA_UNUSED_TENSORS = ("prefix_embeding_layer.embed_tokens.weight",)


def load_heads(heads_dir: str | Path, base_config, dtype: torch.dtype | None = None) -> DraftHeads:
    """Load heads in the native format or either reference format, chosen by the files present;
    in ``dtype`` if given (native heads are built in it, never held in float32 first)."""
    heads_dir = Path(heads_dir)
    if not heads_dir.is_dir():
        raise HeadsCheckpointError(
            f"heads directory {heads_dir} does not exist; train heads with `hydra-export train` "
            "or pass a directory holding heads_config.json + heads.safetensors"
        )
    if (heads_dir / CONFIG_FILE).is_file():
        return load_native_heads(heads_dir, base_config, dtype)
    if (heads_dir / HYDRA_WEIGHTS).is_file():
        return load_hydra_reference(heads_dir, base_config).to(dtype)
    if (heads_dir / MEDUSA_WEIGHTS).is_file():
        return load_medusa_reference(heads_dir, base_config).to(dtype)
    raise HeadsCheckpointError(
        f"{heads_dir} holds no heads checkpoint: expected {CONFIG_FILE}, {HYDRA_WEIGHTS} or {MEDUSA_WEIGHTS}"
    )


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise HeadsCheckpointError(f"{path} not found: reference checkpoints need their config.json beside the weights")
    return json.loads(path.read_text())


def _load_pt(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _fold_shared_blocks(
    tensors: dict[str, torch.Tensor], num_heads: int, num_layers: int, first_shared: int
) -> tuple[dict[str, torch.Tensor], bool]:
    """Detect the repeated-module quirk: blocks first_shared..n-1 of every head hold equal tensors.

    When they do, keep one copy (the native model holds that module once) and report True.
    """
    if num_layers - first_shared < 2:
        return tensors, False
    for k in range(num_heads):
        for param in ("weight", "bias"):
            names = [f"mlps.{k}.{j}.linear.{param}" for j in range(first_shared, num_layers)]
            if not all(name in tensors for name in names):
                return tensors, False
            if any(not torch.equal(tensors[names[0]], tensors[name]) for name in names[1:]):
                return tensors, False
    kept = {
        name: t for name, t in tensors.items()
        if not (name.startswith("mlps.") and int(name.split(".")[2]) > first_shared)
    }
    return kept, True


def load_hydra_reference(heads_dir: Path, base_config) -> DraftHeads:
    config = _read_json(heads_dir / "config.json")
    arch = config.get("hydra_head_arch", "mlp")
    grounded = bool(config.get("grounded_heads", False))
    if arch not in ("mlp", "prefix-mlp") or (arch == "prefix-mlp" and not grounded):
        raise HeadsCheckpointError(
            f"Hydra reference head architecture {arch!r} (grounded={grounded}) is not supported; "
            "supported: 'mlp' (grounded -> hydra, ungrounded -> medusa) and grounded 'prefix-mlp' (-> hydra++)"
        )
    num_heads, num_layers = int(config["hydra_num_heads"]), int(config["hydra_num_layers"])
    kind = "hydra++" if arch == "prefix-mlp" else ("hydra" if grounded else "medusa")
    raw = _load_pt(heads_dir / HYDRA_WEIGHTS)

    tensors: dict[str, torch.Tensor] = {}
    leftovers = dict(raw)
    for name in HYDRA_UNUSED_TENSORS:
        leftovers.pop(name, None)
    for k in range(num_heads):
        for j in range(num_layers):
            ref = f"hydra_mlp.{k}.{2 * j + 1}"
            for part in ("linear", "res_connection"):
                for param in ("weight", "bias"):
                    key = f"{ref}.{part}.{param}"
                    if key in leftovers:
                        native_part = "linear" if part == "linear" else "skip"
                        tensors[f"mlps.{k}.{j}.{native_part}.{param}"] = leftovers.pop(key)
        for param in ("weight", "bias"):
            key = f"hydra_lm_head.{k}.1.{param}"
            if key in leftovers:
                tensors[f"lm_heads.{k}.{param}"] = leftovers.pop(key)
    for key in list(leftovers):
        if key.startswith("prefix_embeding_layer.layers.0."):
            tensors["prefix_layer." + key.removeprefix("prefix_embeding_layer.layers.0.")] = leftovers.pop(key)
        elif key == "prefix_embeding_layer.norm.weight":
            tensors["prefix_norm.weight"] = leftovers.pop(key)
    # Sequential heads' first block is wider, so only the blocks after it can be one module.
    tensors, shared = _fold_shared_blocks(tensors, num_heads, num_layers, first_shared=0 if kind == "medusa" else 1)
    heads_config = HeadsConfig(
        kind=kind,
        num_heads=num_heads,
        num_layers=num_layers,
        hidden_size=base_config.hidden_size,
        vocab_size=base_config.vocab_size,
        own_lm_head=True,
        lm_head_bias=True,
        shared_blocks=shared,
        base_model=str(config.get("base_model_name_or_path", "")),
    )
    return _finish(heads_config, base_config, tensors, leftovers, heads_dir / HYDRA_WEIGHTS)


def load_medusa_reference(heads_dir: Path, base_config) -> DraftHeads:
    config = _read_json(heads_dir / "config.json")
    num_heads, num_layers = int(config["medusa_num_heads"]), int(config["medusa_num_layers"])
    leftovers = dict(_load_pt(heads_dir / MEDUSA_WEIGHTS))
    tensors: dict[str, torch.Tensor] = {}
    for k in range(num_heads):
        for j in range(num_layers):
            for param in ("weight", "bias"):
                key = f"{k}.{j}.linear.{param}"
                if key in leftovers:
                    tensors[f"mlps.{k}.{j}.linear.{param}"] = leftovers.pop(key)
        if f"{k}.{num_layers}.weight" in leftovers:
            tensors[f"lm_heads.{k}.weight"] = leftovers.pop(f"{k}.{num_layers}.weight")
    tensors, shared = _fold_shared_blocks(tensors, num_heads, num_layers, first_shared=0)
    heads_config = HeadsConfig(
        kind="medusa",
        num_heads=num_heads,
        num_layers=num_layers,
        hidden_size=base_config.hidden_size,
        vocab_size=base_config.vocab_size,
        own_lm_head=True,
        lm_head_bias=False,
        shared_blocks=shared,
        base_model=str(config.get("base_model_name_or_path", "")),
    )
    return _finish(heads_config, base_config, tensors, leftovers, heads_dir / MEDUSA_WEIGHTS)


def _finish(heads_config, base_config, tensors, leftovers, source: Path) -> DraftHeads:
    if leftovers:
        raise HeadsCheckpointError(
            f"cannot load heads from {source}: tensors nothing maps to: {', '.join(sorted(leftovers))}"
        )
    heads = build_heads(heads_config, base_config)
    load_tensors_strict(heads, tensors, str(source))
    return heads
