"""Training sequences: chat-formatted prompts plus responses, and their cached base hidden states.

Responses come from the base model itself (self-distillation: what the heads must predict
at inference) or from the corpus. Generation is batched, appended to a jsonl file as it
goes, and resumed from there. Hidden states are computed once and stored as an fp16
memmap so epochs never re-run the base model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..base_model import BaseModel
from .recipe import TrainRecipe


def read_records(path: Path, count: int) -> list[dict]:
    records = json.loads(Path(path).read_text())
    return records[:count]


def prompt_messages(record: dict) -> list[dict]:
    text = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    return [{"role": "user", "content": text}]


def encode_prompt(base: BaseModel, record: dict, max_tokens: int | None = None) -> list[int]:
    """The record's chat prompt, at most ``max_tokens`` long: a long request loses its beginning,
    never the template around it (the system turn and the assistant header the answer follows)."""
    messages = prompt_messages(record)
    ids = chat_prompt_ids(base, messages)
    if max_tokens is None or len(ids) <= max_tokens:
        return ids
    content = base.tokenizer.encode(messages[0]["content"], add_special_tokens=False)
    overhead = len(ids) - len(content)
    if overhead >= max_tokens:
        return ids[-max_tokens:]  # not even the template fits: keep the header at least
    kept = base.tokenizer.decode(content[len(content) - (max_tokens - overhead):])
    ids = chat_prompt_ids(base, [{"role": "user", "content": kept}])
    return ids[-max_tokens:]  # re-tokenising at the cut may add a token or two


def chat_prompt_ids(base: BaseModel, messages: list[dict]) -> list[int]:
    """``messages`` in the model's chat template, ending with the assistant header the answer follows."""
    return list(base.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                   return_dict=False))


def build_sequences(base: BaseModel, recipe: TrainRecipe, cache: Path, advance=lambda n: None) -> list[dict]:
    """The recipe's sequences: ``num_examples`` records with ``responses``, then
    ``corpus_examples`` more records with their corpus outputs."""
    records = read_records(Path(recipe.data), recipe.num_examples + recipe.corpus_examples)
    first = _sequences_for(base, recipe, records[: recipe.num_examples], recipe.responses, cache, advance)
    extra = records[recipe.num_examples :]
    return first + (_sequences_for(base, recipe, extra, "corpus", cache, advance, name="extra-corpus") if extra else [])


@torch.no_grad()
def _sequences_for(base: BaseModel, recipe: TrainRecipe, records: list[dict], responses: str, cache: Path,
                   advance, name: str = "") -> list[dict]:
    """[{"prompt_ids", "response_ids"}] per record, appended to a jsonl file as made (resumable)."""
    out_file = cache / f"sequences-{name or responses}.jsonl"
    done: dict[int, dict] = {}
    if out_file.is_file():
        for line in out_file.read_text().splitlines():
            entry = json.loads(line)
            done[entry["index"]] = entry
    advance(len(done))
    tokenizer = base.tokenizer
    eos = tokenizer.eos_token_id
    todo = [i for i in range(len(records)) if i not in done]
    with open(out_file, "a") as sink:
        for start in range(0, len(todo), recipe.generation_batch_size):
            batch = todo[start : start + recipe.generation_batch_size]
            prompts = [encode_prompt(base, records[i], recipe.max_seq_len // 2) for i in batch]
            if responses == "corpus":
                outputs = [tokenizer.encode(records[i]["output"], add_special_tokens=False) + [eos] for i in batch]
            else:
                outputs = generate_greedy(base, prompts, recipe.max_new_tokens, eos)
            for index, prompt, response in zip(batch, prompts, outputs):
                entry = {"index": index, "prompt_ids": prompt, "response_ids": response[: recipe.max_seq_len - len(prompt)]}
                done[index] = entry
                sink.write(json.dumps(entry) + "\n")
            sink.flush()
            advance(len(batch))
    return [done[i] for i in range(len(records))]


def generate_greedy(base: BaseModel, prompts: list[list[int]], max_new_tokens: int, eos: int) -> list[list[int]]:
    """Greedy, batched with left padding; each response is cut after its first EOS."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), eos, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    out = base.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                              eos_token_id=eos, pad_token_id=eos)[:, width:]
    responses = []
    for row in out.tolist():
        responses.append(row[: row.index(eos) + 1] if eos in row else row)
    return responses


@dataclass
class HiddenStateCache:
    """Every sequence's tokens and final-normed base hidden states, concatenated.

    tokens [total] int32; hidden [total, H] float16 (memmap); offsets [n + 1]; prompt_lengths [n].
    """

    tokens: np.ndarray
    hidden: np.ndarray
    offsets: np.ndarray
    prompt_lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.prompt_lengths)

    @classmethod
    @torch.no_grad()
    def build(cls, base: BaseModel, sequences: list[dict], cache: Path, advance=lambda n: None) -> HiddenStateCache:
        lengths = [len(s["prompt_ids"]) + len(s["response_ids"]) for s in sequences]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        meta = cache / "hidden_meta.npz"
        hidden_path = cache / "hidden.f16"
        shape = (int(offsets[-1]), base.config.hidden_size)
        if meta.is_file() and hidden_path.is_file():
            stored = np.load(meta)
            if np.array_equal(stored["offsets"], offsets):
                advance(len(sequences))
                return cls(stored["tokens"], np.memmap(hidden_path, np.float16, "r", shape=shape), offsets,
                           stored["prompt_lengths"])
        tokens = np.zeros(shape[0], dtype=np.int32)
        partial = cache / "hidden.f16.partial"
        hidden = np.memmap(partial, np.float16, "w+", shape=shape)
        for i, sequence in enumerate(sequences):
            ids = sequence["prompt_ids"] + sequence["response_ids"]
            state = base.decoder(input_ids=torch.tensor([ids])).last_hidden_state[0]
            hidden[offsets[i] : offsets[i + 1]] = state.to(torch.float16).numpy()
            tokens[offsets[i] : offsets[i + 1]] = ids
            advance(1)
        hidden.flush()
        del hidden
        partial.replace(hidden_path)
        prompt_lengths = np.array([len(s["prompt_ids"]) for s in sequences], dtype=np.int64)
        np.savez(meta, tokens=tokens, offsets=offsets, prompt_lengths=prompt_lengths)
        return cls(tokens, np.memmap(hidden_path, np.float16, "r", shape=shape), offsets, prompt_lengths)

    def batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded batch: hidden [B, T, H] float32, tokens [B, T], lengths [B], prompt_lengths [B]."""
        lengths = [int(self.offsets[i + 1] - self.offsets[i]) for i in indices]
        width = max(lengths)
        hidden = torch.zeros(len(indices), width, self.hidden.shape[1])
        tokens = torch.zeros(len(indices), width, dtype=torch.long)
        for row, i in enumerate(indices):
            start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
            hidden[row, : stop - start] = torch.from_numpy(np.asarray(self.hidden[start:stop], dtype=np.float32))
            tokens[row, : stop - start] = torch.from_numpy(self.tokens[start:stop].astype(np.int64))
        return hidden, tokens, torch.tensor(lengths), torch.from_numpy(self.prompt_lengths[indices])
