"""A training recipe: one JSON file under recipes/, read into a frozen dataclass."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import HydraExportError


@dataclass(frozen=True)
class TrainRecipe:
    kind: str  # medusa | hydra | hydra++
    output_dir: str  # heads are written here (native format)
    model: str = "smollm2-135m-instruct"
    num_heads: int = 4
    num_layers: int | None = None  # default per kind (Hydra++: 4)
    # Data: one file or a list, interleaved (dataset.read_records): Alpaca-style records or prompts
    # jsonl; responses from the base model itself (self-distillation) or the records' own outputs (corpus).
    data: str | list[str] = "data/alpaca_5000.json"
    num_examples: int = 1000
    # Train on the sequences from this index on: the earlier ones stay in the data (shared cache, same
    # held-out split and draft vocabulary) but an earlier stage already trained on them.
    first_example: int = 0
    responses: str = "self-distill"  # "self-distill" | "corpus"
    corpus_examples: int = 0  # extra records after those, trained on their own (corpus) outputs
    max_new_tokens: int = 128  # self-distillation response length
    max_seq_len: int = 384
    generation_batch_size: int = 16
    # Optimisation.
    loss: str = "distill"  # "distill": KL to the base model's next-token distribution; "ce": data tokens
    vocab_subset: int = 0  # > 0: logits over the N most frequent target tokens only (cheap on CPUs)
    epochs: int = 1
    batch_size: int = 8  # sequences per step
    learning_rate: float = 1e-3
    warmup_fraction: float = 0.05
    weight_decay: float = 0.0
    dropout: float = 0.0
    input_noise: float = 0.0  # std of Gaussian noise on the token embeddings the heads see
    held_out_fraction: float = 0.05
    eval_every: int = 200  # steps
    checkpoint_every: int = 200
    seed: int = 0
    init_heads: str = ""  # native heads directory to start from (same kind and shape), e.g. the shipped heads
    cache_dir: str = ""  # default: <output_dir>.cache

    @classmethod
    def from_file(cls, path: Path) -> TrainRecipe:
        path = Path(path)
        if not path.is_file():
            raise HydraExportError(f"recipe {path} not found; see recipes/ for examples")
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise HydraExportError(f"recipe {path} is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise HydraExportError(f"recipe {path} must hold a JSON object of recipe keys")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known - {"comment"})
        if unknown:
            raise HydraExportError(f"recipe {path} has unknown keys {unknown}; known keys: {sorted(known)}")
        recipe = cls(**{key: value for key, value in data.items() if key in known})
        recipe.validate()
        return recipe

    def validate(self) -> None:
        for name, low in (("num_heads", 1), ("num_examples", 1), ("first_example", 0), ("corpus_examples", 0),
                          ("max_new_tokens", 1), ("max_seq_len", 2), ("generation_batch_size", 1), ("vocab_subset", 0),
                          ("epochs", 1), ("batch_size", 1), ("eval_every", 1), ("checkpoint_every", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise HydraExportError(f"recipe key {name!r} must be an integer >= {low}, got {value!r}")
        if self.first_example >= self.num_examples:
            raise HydraExportError(f"recipe key 'first_example' must be an integer in [0, num_examples = "
                                   f"{self.num_examples}), got {self.first_example!r}")
        if self.num_layers is not None and (not isinstance(self.num_layers, int) or self.num_layers < 1):
            raise HydraExportError(f"recipe key 'num_layers' must be a positive integer or null, got {self.num_layers!r}")
        for name, low, high in (("learning_rate", 0.0, 1.0), ("warmup_fraction", 0.0, 1.0), ("weight_decay", 0.0, 1.0),
                                ("dropout", 0.0, 1.0), ("input_noise", 0.0, 10.0), ("held_out_fraction", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
                raise HydraExportError(f"recipe key {name!r} must be a number in [{low:g}, {high:g}), got {value!r}")
        if not self.data_files or not all(isinstance(path, str) and path for path in self.data_files):
            raise HydraExportError(f"recipe key 'data' must be a file path or a non-empty list of them, got {self.data!r}")
        for name in ("kind", "output_dir", "model"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise HydraExportError(f"recipe key {name!r} must be a non-empty string")
        if not isinstance(self.init_heads, str):
            raise HydraExportError(f"recipe key 'init_heads' must be a heads directory (a string), got {self.init_heads!r}")
        if self.responses not in ("self-distill", "corpus"):
            raise HydraExportError(f"responses must be 'self-distill' or 'corpus', got {self.responses!r}")
        if self.loss not in ("distill", "ce"):
            raise HydraExportError(f"loss must be 'distill' or 'ce', got {self.loss!r}")

    @property
    def data_files(self) -> list[str]:
        return [self.data] if isinstance(self.data, str) else list(self.data) if isinstance(self.data, list) else []

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.output_dir + ".cache")
