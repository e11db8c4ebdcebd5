"""`hydra-export train RECIPE`: frozen base model, trainable heads, resumable.

Stages: self-distillation data (resumable) -> cached hidden states (fp16 memmap) ->
optimisation with a cosine schedule, held-out per-head top-1/top-5 accuracy and a
measured mean accepted length (reference decoder on held-out prompts) at each eval,
checkpoints, and final fp16 heads in the native format.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from hydra_runtime.tree import TreeBuffers
from hydra_runtime.tree_presets import TREE_PRESETS

from ..base_model import BaseModel, load_base_model
from ..decoding.reference_decoder import ReferenceDecoder
from ..errors import HydraExportError
from ..heads import BaseProjections, DraftHeads, build_heads, heads_config_for
from ..heads.checkpoint import load_native_heads, save_heads
from hydra_runtime.decode_simulator import DecodeTrace, simulate

from .dataset import HiddenStateCache, build_sequences
from .decode_traces import head_ranks_from_hidden
from .losses import HEAD_LOSS_DECAY, head_inputs, head_logits, head_loss, truth_rank_counts
from .recipe import TrainRecipe

PROBE_TREE = "tree16"
SIMULATED_TREE = "mc_sim_7b_63"  # held-out sequences replayed on it, heads alone and with a copy chain
SIMULATED_COPY_NODES = 8
SIMULATED_SEQUENCES = 48
STATE_FILE = "state.json"  # with state.safetensors: the trainer's checkpoint (never pickled)
PROBE_PROMPTS = 4
PROBE_NEW_TOKENS = 40
LOG_FILE = "training_log.json"


def frequent_vocab(cache: HiddenStateCache, size: int, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``size`` most frequent tokens of the training data, and a map token -> subset index (-1 if absent)."""
    counts = np.bincount(cache.tokens, minlength=vocab_size)
    vocab = torch.from_numpy(np.argsort(-counts, kind="stable")[:size].copy())
    index = torch.full((vocab_size,), -1, dtype=torch.long)
    index[vocab] = torch.arange(len(vocab))
    return vocab, index


def cosine_with_warmup(total_steps: int, warmup_fraction: float):
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Trainer:
    def __init__(self, recipe: TrainRecipe, base: BaseModel | None = None, progress=None, data_only: bool = False):
        """``data_only``: only ``prepare_data`` will be called, so ``init_heads`` is not read (the data
        never depends on heads: a later stage's data can be made while an earlier stage trains)."""
        self.recipe = recipe
        self.progress = progress  # callable(stage, completed, total) or None
        torch.manual_seed(recipe.seed)
        self.base = base or load_base_model(recipe.model)
        for parameter in self.base.model.parameters():
            parameter.requires_grad_(False)
        self.projections = BaseProjections(self.base.embed_tokens, self.base.lm_head)
        config = heads_config_for(recipe.kind, self.base.config, num_heads=recipe.num_heads,
                                  num_layers=recipe.num_layers, base_model=recipe.model, dropout=recipe.dropout)
        # Heads trained on a vocabulary subset also draft from it (see HeadsConfig.draft_vocab_size).
        config = dataclasses.replace(config, draft_vocab_size=recipe.vocab_subset)
        self.heads: DraftHeads = build_heads(config, self.base.config)
        # Continue from trained heads (e.g. the shipped ones) on this recipe's data.
        if recipe.init_heads and not data_only:
            self._load_head_weights(Path(recipe.init_heads), f"init_heads {recipe.init_heads}",
                                    "point init_heads at heads of this recipe's kind and shape")
        self.cache_dir = recipe.cache_path
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir = Path(recipe.output_dir + ".checkpoint")
        self.log: list[dict] = []

    def _report(self, stage: str, completed: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, completed, total)

    def prepare_data(self) -> tuple[HiddenStateCache, list[int], list[int], list[dict]]:
        total = self.recipe.num_examples + self.recipe.corpus_examples
        done = [0]

        def advance_sequences(n):
            done[0] += n
            self._report(f"{self.recipe.responses} responses", done[0], total)

        sequences = build_sequences(self.base, self.recipe, self.cache_dir, advance_sequences)
        done[0] = 0

        def advance_hidden(n):
            done[0] += n
            self._report("cache base hidden states", done[0], len(sequences))

        cache = HiddenStateCache.build(self.base, sequences, self.cache_dir, advance_hidden)
        order = np.random.default_rng(self.recipe.seed).permutation(len(cache)).tolist()
        held_out = max(1, int(len(order) * self.recipe.held_out_fraction))
        first = self.recipe.first_example
        train_ids = [i for i in order[held_out:] if i >= first]
        if not train_ids:
            raise HydraExportError(
                f"the recipe leaves no sequences to train on: all {len(cache) - first} from "
                f"first_example = {first} on are held out; lower first_example or held_out_fraction")
        # The split is drawn over the whole cache, so it moves as the cache grows: held-out answers before
        # first_example may be ones an earlier stage (init_heads) trained on. Only the later ones are scored.
        scored = [i for i in order[:held_out] if i >= first]
        if not scored:
            raise HydraExportError(
                f"none of the {held_out} held-out answers is at or after first_example = {first}, so nothing "
                "the init_heads never trained on is left to score; raise held_out_fraction")
        return cache, train_ids, scored, sequences

    def batch_loss(self, cache: HiddenStateCache, indices: list[int], vocab, vocab_index) -> tuple[torch.Tensor, int]:
        hidden, tokens, lengths, prompt_lengths = cache.batch(indices)
        context = self.heads.context(hidden, torch.arange(hidden.shape[1])[None], None)
        total, rows = torch.zeros(()), 0
        for k in range(self.heads.config.num_heads):
            inputs = head_inputs(k, context, hidden, tokens, lengths, prompt_lengths)
            if inputs.context.shape[0] == 0:
                continue
            student = head_logits(self.heads, k, inputs, self.projections, vocab, self.recipe.input_noise)
            loss = head_loss(student, inputs, self.projections, vocab, vocab_index, self.recipe.loss)
            total = total + HEAD_LOSS_DECAY**k * loss
            rows = max(rows, inputs.context.shape[0])
        return total, rows

    @torch.no_grad()
    def rank_probs(self, cache: HiddenStateCache, held_out: list[int], max_rank: int = 10) -> np.ndarray:
        """[K, max_rank]: on held-out data, how often head k's rank-r candidate is the base model's token."""
        self.heads.eval()
        num_heads = self.heads.config.num_heads
        counts, rows = np.zeros((num_heads, max_rank)), np.zeros(num_heads)
        for start in range(0, len(held_out), self.recipe.batch_size):
            hidden, tokens, lengths, prompt_lengths = cache.batch(held_out[start : start + self.recipe.batch_size])
            context = self.heads.context(hidden, torch.arange(hidden.shape[1])[None], None)
            for k in range(num_heads):
                inputs = head_inputs(k, context, hidden, tokens, lengths, prompt_lengths)
                found, n = truth_rank_counts(self.heads, k, inputs, self.projections, max_rank)
                counts[k] += found
                rows[k] += n
        return counts / np.maximum(rows, 1)[:, None]

    @torch.no_grad()
    def evaluate(self, cache: HiddenStateCache, held_out: list[int], sequences: list[dict]) -> dict:
        probs = self.rank_probs(cache, held_out)
        num_heads = self.heads.config.num_heads
        # The probe tree cut to the heads' depth: recipes with fewer heads are probed on its shallow part.
        probe = TreeBuffers.from_choices([c for c in TREE_PRESETS[PROBE_TREE] if len(c) <= num_heads])
        decoder = ReferenceDecoder(self.base, self.heads, probe)
        eos = (self.base.tokenizer.eos_token_id,)
        accepted = []
        for i in held_out[:PROBE_PROMPTS]:
            result = decoder.generate(sequences[i]["prompt_ids"], PROBE_NEW_TOKENS, eos_token_ids=eos)
            accepted += result.accepted_lengths
        simulated = self.simulated_accepted_lengths(cache, held_out, sequences)
        self.heads.train()
        return {
            "top1": probs[:, 0].round(4).tolist(),
            "top5": probs[:, :5].sum(axis=1).round(4).tolist(),
            "rank_probs": probs.round(5).tolist(),
            f"mean_accepted_length_{PROBE_TREE}": round(float(np.mean(accepted)), 4),
            "simulated_accepted_length": simulated,
        }

    @torch.no_grad()
    def simulated_accepted_lengths(self, cache: HiddenStateCache, held_out: list[int], sequences: list[dict]) -> dict:
        """Greedy decoding replayed (decode_simulator) over held-out self-distilled answers, which are
        the base model's own greedy continuations, on SIMULATED_TREE alone and with a copy chain.
        Uses the cached hidden states: no base forward."""
        num_heads = self.heads.config.num_heads
        choices = [c for c in TREE_PRESETS[SIMULATED_TREE] if len(c) <= num_heads]
        traces = []
        for i in held_out[:SIMULATED_SEQUENCES]:
            prompt, response = sequences[i]["prompt_ids"], sequences[i]["response_ids"]
            hidden = torch.from_numpy(np.asarray(cache.hidden[cache.offsets[i] : cache.offsets[i + 1]], np.float32))
            ranks = head_ranks_from_hidden(self.heads, self.projections, prompt, response, hidden)
            traces.append(DecodeTrace(np.asarray(prompt), np.asarray(response), ranks))
        return {f"{SIMULATED_TREE}{suffix}": round(simulate(TreeBuffers.from_choices(choices, copy_nodes=copy), traces)
                                                   .mean_accepted_length, 4)
                for suffix, copy in (("", 0), (f"+copy{SIMULATED_COPY_NODES}", SIMULATED_COPY_NODES))}

    def train(self, resume: bool = True) -> dict:
        recipe = self.recipe
        cache, train_ids, held_out, sequences = self.prepare_data()
        vocab = vocab_index = None
        if recipe.vocab_subset > 0:
            vocab, vocab_index = frequent_vocab(cache, recipe.vocab_subset, self.base.config.vocab_size)
            self.heads.draft_vocab.copy_(vocab)
        parameters = [p for p in self.heads.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
        steps_per_epoch = math.ceil(len(train_ids) / recipe.batch_size)
        total_steps = steps_per_epoch * recipe.epochs
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total_steps, recipe.warmup_fraction))
        step, tokens_seen = 0, 0
        if resume and (self.checkpoint_dir / "state.pt").is_file():
            raise HydraExportError(
                f"{self.checkpoint_dir} holds a pickled checkpoint (state.pt) from an older hydra-export; it is not "
                "loaded, since unpickling can run code. Delete that folder to train from the start")
        if resume and (self.checkpoint_dir / STATE_FILE).is_file():
            step, tokens_seen = self._load_checkpoint(optimizer, scheduler)
        self.heads.train()
        rng = np.random.default_rng(recipe.seed)
        epoch_orders = [rng.permutation(train_ids).tolist() for _ in range(recipe.epochs)]
        started = time.perf_counter()
        if step == 0:
            self.log.append({"step": 0, "tokens": 0, **self.evaluate(cache, held_out, sequences)})
        while step < total_steps:
            epoch, position = divmod(step, steps_per_epoch)
            batch = epoch_orders[epoch][position * recipe.batch_size : (position + 1) * recipe.batch_size]
            loss, rows = self.batch_loss(cache, batch, vocab, vocab_index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            tokens_seen += rows
            self._report(f"train {recipe.kind} (loss {loss.item():.3f})", step, total_steps)
            if step % recipe.eval_every == 0 or step == total_steps:
                entry = {"step": step, "tokens": tokens_seen, "loss": round(loss.item(), 4),
                         **self.evaluate(cache, held_out, sequences)}
                self.log.append(entry)
            if step % recipe.checkpoint_every == 0 and step < total_steps:
                self._save_checkpoint(optimizer, scheduler, step, tokens_seen)
        seconds = time.perf_counter() - started
        save_heads(self.heads, Path(recipe.output_dir), dtype=torch.float16)
        summary = {"recipe": asdict(recipe), "train_seconds": round(seconds, 1), "steps": step,
                   "train_sequences": len(train_ids), "held_out_sequences": len(held_out), "log": self.log}
        (Path(recipe.output_dir) / LOG_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _load_head_weights(self, directory: Path, what: str, fix: str) -> None:
        loaded = load_native_heads(directory, self.base.config)
        # The draft vocabulary is derived from the data (set again in train()), not learned.
        try:
            missing, unexpected = self.heads.load_state_dict(loaded.state_dict(), strict=False)
        except RuntimeError as error:  # tensors of other shapes
            raise HydraExportError(f"{what} does not match the recipe's heads ({error}); {fix}") from None
        if unexpected or set(missing) - {"draft_vocab"}:
            raise HydraExportError(f"{what} does not match the recipe's heads (missing {missing}, "
                                   f"unexpected {unexpected}); {fix}")

    def _save_checkpoint(self, optimizer, scheduler, step: int, tokens_seen: int) -> None:
        """Heads, optimizer tensors (safetensors) and the rest (JSON): nothing is pickled, so a
        planted checkpoint cannot run code when a later run resumes from it."""
        save_heads(self.heads, self.checkpoint_dir / "heads")
        tensors, scalars = {"torch_rng": torch.get_rng_state()}, {}
        optimizer_state = optimizer.state_dict()
        for index, values in optimizer_state["state"].items():
            for key, value in values.items():
                if torch.is_tensor(value):
                    tensors[f"optimizer.{index}.{key}"] = value.contiguous()
                else:
                    scalars.setdefault(str(index), {})[key] = value
        state = {"step": step, "tokens": tokens_seen, "log": self.log, "scheduler": scheduler.state_dict(),
                 "optimizer_param_groups": optimizer_state["param_groups"], "optimizer_scalars": scalars}
        save_file(tensors, str(self.checkpoint_dir / "state.safetensors.partial"))
        (self.checkpoint_dir / "state.json.partial").write_text(json.dumps(state))
        (self.checkpoint_dir / "state.safetensors.partial").replace(self.checkpoint_dir / "state.safetensors")
        (self.checkpoint_dir / "state.json.partial").replace(self.checkpoint_dir / STATE_FILE)

    def _load_checkpoint(self, optimizer, scheduler) -> tuple[int, int]:
        self._load_head_weights(self.checkpoint_dir / "heads", f"checkpoint {self.checkpoint_dir}",
                                "delete it or restore the recipe it was made with")
        try:
            state = json.loads((self.checkpoint_dir / STATE_FILE).read_text())
            tensors = load_file(str(self.checkpoint_dir / "state.safetensors"))
            optimizer_state: dict = {"state": {}, "param_groups": state["optimizer_param_groups"]}
            for name, value in tensors.items():
                if name.startswith("optimizer."):
                    _, index, key = name.split(".", 2)
                    optimizer_state["state"].setdefault(int(index), {})[key] = value
            for index, values in state["optimizer_scalars"].items():
                optimizer_state["state"].setdefault(int(index), {}).update(values)
            optimizer.load_state_dict(optimizer_state)
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(tensors["torch_rng"])
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
            raise HydraExportError(f"checkpoint {self.checkpoint_dir} is unreadable ({type(error).__name__}: "
                                   f"{error}); delete it to train from the start") from None
        self.log = state["log"]
        return int(state["step"]), int(state["tokens"])
