"""Native heads checkpoints (``heads.safetensors`` + ``heads_config.json``) and strict loading.

Every tensor of the module must come from the checkpoint and every tensor of the
checkpoint must land in the module; otherwise the load fails listing the leftovers.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..atomic_output import write_output_file
from ..errors import HeadsCheckpointError
from .config import HeadsConfig
from .draft_heads import DraftHeads
from .registry import build_heads

WEIGHTS_FILE = "heads.safetensors"
CONFIG_FILE = "heads_config.json"


def unique_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers by name, each shared tensor once (first name wins)."""
    tensors = dict(module.named_parameters())
    seen = {id(t) for t in tensors.values()}
    for name, buffer in module.state_dict(keep_vars=True).items():
        if name not in tensors and id(buffer) not in seen and not isinstance(buffer, torch.nn.Parameter):
            tensors[name] = buffer
            seen.add(id(buffer))
    return tensors


def load_tensors_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``tensors`` into ``module``; fail listing every missing, unexpected or mis-shaped tensor."""
    expected = unique_tensors(module)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [
        f"{name}: checkpoint {tuple(tensors[name].shape)} vs model {tuple(expected[name].shape)}"
        for name in sorted(set(expected) & set(tensors))
        if tuple(tensors[name].shape) != tuple(expected[name].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"tensors nothing maps to: {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {'; '.join(mismatched)}")
    if problems:
        raise HeadsCheckpointError(
            f"cannot load heads from {source}: " + " | ".join(problems)
            + ". Check that the checkpoint matches its config and was trained for this base model"
        )
    with torch.no_grad():
        for name, target in expected.items():
            target.copy_(tensors[name].to(target.dtype))


def save_heads(heads: DraftHeads, out_dir: Path, dtype: torch.dtype | None = None,
               stored_elsewhere: frozenset[str] = frozenset()) -> None:
    """Write the two heads files into ``out_dir``, each atomically (written beside, then renamed),
    the config last. Other files there (a tree.json, a training log) are left as they are.
    Tensors named in ``stored_elsewhere`` are left out (an artifact's engine holds them: in_artifact)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: (t.detach().to(dtype) if dtype is not None and t.is_floating_point() else t.detach()).contiguous()
        for name, t in unique_tensors(heads).items() if name not in stored_elsewhere
    }
    write_output_file(out_dir / WEIGHTS_FILE, lambda partial: save_file(tensors, str(partial)))
    config = json.dumps(heads.config.to_dict(), indent=2) + "\n"
    write_output_file(out_dir / CONFIG_FILE, lambda partial: partial.write_text(config))


def read_heads_config(heads_dir: Path) -> HeadsConfig:
    path = Path(heads_dir) / CONFIG_FILE
    if not path.is_file():
        raise HeadsCheckpointError(
            f"{path} not found: a heads directory holds {CONFIG_FILE} and {WEIGHTS_FILE} "
            "(or a reference checkpoint: hydra_lm_head.pt / medusa_lm_head.pt with config.json)"
        )
    return HeadsConfig.from_dict(json.loads(path.read_text()))


@contextlib.contextmanager
def _linear_layers_uninitialised():
    """nn.Linear draws random weights in its constructor; heads about to be loaded strictly (every
    tensor overwritten) do not need them, and for a 1.1B model's Hydra++ heads they took 1.5 s."""
    original = torch.nn.Linear.reset_parameters
    torch.nn.Linear.reset_parameters = lambda self: None
    try:
        yield
    finally:
        torch.nn.Linear.reset_parameters = original


def load_native_heads(heads_dir: Path, base_config, dtype: torch.dtype | None = None) -> DraftHeads:
    """``dtype``: build the heads in it (no float32 copy first; checkpoints in it load as they are)."""
    heads_dir = Path(heads_dir)
    with _linear_layers_uninitialised():
        heads = build_heads(read_heads_config(heads_dir), base_config).to(dtype)
    weights = heads_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise HeadsCheckpointError(f"{weights} not found next to {CONFIG_FILE}")
    from .in_artifact import INDEX_FILE, read_engine_tensors  # here: in_artifact builds on this module

    tensors = load_file(str(weights))
    if (heads_dir / INDEX_FILE).is_file():  # an artifact's heads: the rest are in its engine
        tensors |= read_engine_tensors(heads_dir, unique_tensors(heads))
    load_tensors_strict(heads, tensors, str(weights))
    return heads
