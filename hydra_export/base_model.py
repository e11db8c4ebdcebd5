"""Base models: load from a Hugging Face directory, a GGUF file, or a named default."""

from __future__ import annotations

import contextlib
import json

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as transformers_logging

from .architectures import ArchitectureSpec, architecture_for
from .default_models import is_named_model, pull_named_model
from .errors import UnsupportedModelError


@dataclass
class BaseModel:
    """A causal LM plus what the rest of the toolchain needs to know about it."""

    model: PreTrainedModel  # *ForCausalLM, eval mode
    tokenizer: object | None  # a transformers tokenizer, None for random test models
    architecture: ArchitectureSpec
    name: str  # identity recorded in manifests (path or named model)

    @property
    def config(self):
        return self.model.config

    @property
    def decoder(self) -> torch.nn.Module:
        """The transformer stack without the LM head (``model.model``)."""
        return self.model.model

    @property
    def embed_tokens(self) -> torch.nn.Embedding:
        return self.model.get_input_embeddings()

    @property
    def lm_head(self) -> torch.nn.Linear:
        return self.model.get_output_embeddings()

    @property
    def max_seq_len(self) -> int:
        return int(self.config.max_position_embeddings)

    def save(self, out_dir: Path) -> None:
        """Save as a plain safetensors Hugging Face directory (works for GGUF-loaded models too)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        save_model(self.model, str(out_dir / "model.safetensors"))  # shared (tied) tensors stored once
        self.config.save_pretrained(out_dir)
        clean_saved_config(out_dir / "config.json", type(self.model).__name__, str(self.model.dtype).removeprefix("torch."))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(out_dir)


def clean_saved_config(path: Path, architecture: str, dtype: str) -> None:
    """Make a saved config.json what other tools expect of a plain safetensors directory: its
    architecture named, its dtype the weights', and no GGUF quantization block (the weights
    were de-quantized when loaded)."""
    config = json.loads(path.read_text())
    config.pop("quantization_config", None)
    config["architectures"] = config.get("architectures") or [architecture]
    config["dtype"] = config["torch_dtype"] = dtype  # "float32", "float16", "bfloat16"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def wrap_model(model: PreTrainedModel, tokenizer=None, name: str = "in-memory") -> BaseModel:
    """Check the architecture is supported and wrap an already built model."""
    architecture = architecture_for(model.config.model_type)
    model.eval()
    return BaseModel(model=model, tokenizer=tokenizer, architecture=architecture, name=name)


def load_base_model(source: str | Path, dtype: torch.dtype = torch.float32) -> BaseModel:
    """Load a base model from a named default, a Hugging Face directory, or a ``.gguf`` file."""
    source_text = str(source)
    if is_named_model(source_text):
        return _load_hf_dir(pull_named_model(source_text), dtype, name=source_text)
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return load_gguf(path, dtype)
    if path.is_dir() and (path / "config.json").is_file():
        return _load_hf_dir(path, dtype, name=str(path))
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return load_gguf(ggufs[0], dtype)
    raise UnsupportedModelError(
        f"cannot load a base model from {source_text!r}: expected a Hugging Face directory with "
        "config.json and safetensors weights, a .gguf file, or the named model "
        "'smollm2-135m-instruct'"
    )


def _load_hf_dir(path: Path, dtype: torch.dtype, name: str) -> BaseModel:
    config = AutoConfig.from_pretrained(path)
    architecture_for(config.model_type)  # fail before loading weights
    with _no_transformers_progress_bar():  # our commands show their own progress
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    has_tokenizer = any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(path) if has_tokenizer else None
    return wrap_model(model, tokenizer, name=name)


@contextlib.contextmanager
def _no_transformers_progress_bar():
    """transformers' "Loading weights" bar is switched off while it loads, and restored after."""
    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def load_gguf(path: Path, dtype: torch.dtype = torch.float32) -> BaseModel:
    """Load a GGUF file; transformers' GGUF reader de-quantizes the weights to ``dtype``.

    Not through ``from_pretrained``, which refuses GGUF files unless ``accelerate`` is installed
    (the build does not need it otherwise, and transformers imports it into every build when it
    is there): the model is made from the file's config without initialising its weights (the
    allocations stay untouched, so nothing is resident twice), then the file's tensors replace them.
    """
    from transformers.initialization import no_init_weights
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    kwargs = {"gguf_file": path.name}
    config = AutoConfig.from_pretrained(path.parent, **kwargs)
    architecture_for(config.model_type)  # fail before de-quantizing
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model, torch_dtype=dtype)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    model.tie_weights()
    missing = [name for name in missing if not _is_tied_output(model, name)]
    if missing or unexpected:
        raise UnsupportedModelError(f"{path}: the GGUF file's tensors do not match a {type(model).__name__} "
                                    f"(missing {missing[:3]}, unexpected {unexpected[:3]}); convert the model "
                                    "again, or pass its Hugging Face directory with --model")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    return wrap_model(model, tokenizer, name=str(path))


def _is_tied_output(model: PreTrainedModel, name: str) -> bool:
    """``name`` is the LM head's weight and the model ties it to the input embedding."""
    output = model.get_output_embeddings()
    return (getattr(model.config, "tie_word_embeddings", False) and output is not None
            and output.weight is model.get_input_embeddings().weight and name.endswith("lm_head.weight"))
