"""Training sequences: chat-formatted prompts plus responses, and their cached base hidden states.

Responses come from the base model itself (self-distillation: what the heads must predict
at inference) or from the corpus. Generation is batched, appended to a jsonl file as it
goes, and resumed from there. Hidden states are computed once and stored as an fp16
memmap so epochs never re-run the base model.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..base_model import BaseModel
from .recipe import TrainRecipe


def read_records(paths: list[str], count: int) -> list[dict]:
    """The first ``count`` records of the data files, interleaved (one from each file in turn, so any
    prefix mixes the sources). A file is an Alpaca JSON array (instruction/input/output) or a prompts
    jsonl (``{"turns": [first user turn, ...]}``, as MT-Bench and the ShareGPT files are)."""
    sources = [_records_of(Path(path)) for path in paths]
    mixed = [source[i] for i in range(max(map(len, sources), default=0)) for source in sources if i < len(source)]
    return mixed[:count]


def _records_of(path: Path) -> list[dict]:
    if path.suffix != ".jsonl":
        return json.loads(path.read_text())
    return [{"instruction": json.loads(line)["turns"][0]} for line in path.read_text().splitlines() if line.strip()]


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
    records = read_records(recipe.data_files, recipe.num_examples + recipe.corpus_examples)
    first = _sequences_for(base, recipe, records[: recipe.num_examples], recipe.responses, cache, advance)
    extra = records[recipe.num_examples :]
    return first + (_sequences_for(base, recipe, extra, "corpus", cache, advance, name="extra-corpus") if extra else [])


GENERATION_WINDOW = 8  # batches: prompts are sorted by length within this many batches (less padding)


@torch.no_grad()
def _sequences_for(base: BaseModel, recipe: TrainRecipe, records: list[dict], responses: str, cache: Path,
                   advance, name: str = "") -> list[dict]:
    """[{"prompt_ids", "response_ids"}] per record, appended to a jsonl file as made (resumable).

    Self-distilled entries also name their rows (``hidden_row``) in a fp16 file of the base hidden
    states generation computed anyway ([rows, H], prompt then response), so they never run the
    base model again."""
    cache.mkdir(parents=True, exist_ok=True)
    stem = f"sequences-{name or responses}"
    out_file, hidden_file = cache / f"{stem}.jsonl", cache / f"{stem}.hidden.f16"
    done: dict[int, dict] = {}
    if out_file.is_file():
        for line in out_file.read_text().splitlines():
            entry = json.loads(line)
            done[entry["index"]] = entry
    hidden_rows = max((_stored_rows(entry) for entry in done.values()), default=0)
    generating = responses != "corpus"  # corpus answers have no hidden states to keep
    if generating:
        with open(hidden_file, "ab") as stored:
            stored.truncate(hidden_rows * base.config.hidden_size * 2)  # rows past the last entry: an interrupted batch
    advance(len(done))
    tokenizer = base.tokenizer
    eos = tokenizer.eos_token_id
    todo = [i for i in range(len(records)) if i not in done]
    batch_size, window = recipe.generation_batch_size, recipe.generation_batch_size * GENERATION_WINDOW
    with open(out_file, "a") as sink, open(hidden_file, "ab") if generating else contextlib.nullcontext() as stored:
        for window_start in range(0, len(todo), window):
            prompts = {i: encode_prompt(base, records[i], recipe.max_seq_len // 2)
                       for i in todo[window_start : window_start + window]}
            by_length = sorted(prompts, key=lambda i: len(prompts[i]))
            for start in range(0, len(by_length), batch_size):
                batch = by_length[start : start + batch_size]
                if not generating:
                    outputs = [tokenizer.encode(records[i]["output"], add_special_tokens=False) + [eos] for i in batch]
                    hiddens = [None] * len(batch)
                else:
                    outputs, hiddens = generate_greedy_with_hidden(base, [prompts[i] for i in batch],
                                                                   recipe.max_new_tokens, eos)
                for index, response, hidden in zip(batch, outputs, hiddens):
                    prompt = prompts[index]
                    entry = {"index": index, "prompt_ids": prompt, "response_ids": response[: recipe.max_seq_len - len(prompt)]}
                    if hidden is not None:
                        rows = len(prompt) + len(entry["response_ids"])
                        stored.write(hidden[:rows].to(torch.float16).numpy().tobytes())
                        entry["hidden_row"] = hidden_rows
                        hidden_rows += rows
                    done[index] = entry
                if generating:
                    stored.flush()
                for index in batch:  # entries only after their rows are on disk
                    sink.write(json.dumps(done[index]) + "\n")
                sink.flush()
                advance(len(batch))
    return [_with_hidden_file(done[i], hidden_file) for i in range(len(records))]


def _stored_rows(entry: dict) -> int:
    if "hidden_row" not in entry:
        return 0
    return entry["hidden_row"] + len(entry["prompt_ids"]) + len(entry["response_ids"])


def _with_hidden_file(entry: dict, hidden_file: Path) -> dict:
    return {**entry, "hidden_file": str(hidden_file)} if "hidden_row" in entry else entry


def generate_greedy(base: BaseModel, prompts: list[list[int]], max_new_tokens: int, eos: int) -> list[list[int]]:
    """Greedy, batched with left padding; each response is cut after its first EOS."""
    responses, _ = _generate(base, prompts, max_new_tokens, eos, keep_hidden=False)
    return responses


def generate_greedy_with_hidden(base: BaseModel, prompts: list[list[int]], max_new_tokens: int,
                                eos: int) -> tuple[list[list[int]], list[torch.Tensor]]:
    """generate_greedy, plus each sequence's final-normed base hidden states [len(prompt) +
    len(response), H] as generation computed them (the last response token, never fed back, gets
    zeros: no head trains on it)."""
    responses, calls = _generate(base, prompts, max_new_tokens, eos, keep_hidden=True)
    width = max(len(p) for p in prompts)
    steps = torch.cat(calls[1:], dim=1) if len(calls) > 1 else calls[0][:, :0]  # [B, new - 1, H]
    hiddens = []
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        fed = steps[row, : len(response) - 1]
        last = torch.zeros(1, fed.shape[-1], dtype=fed.dtype)
        hiddens.append(torch.cat([calls[0][row, width - len(prompt) :], fed, last]))
    return responses, hiddens


def _generate(base: BaseModel, prompts: list[list[int]], max_new_tokens: int, eos: int,
              keep_hidden: bool) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Responses, and with ``keep_hidden`` the final norm's outputs per forward call: [B, width, H]
    at prefill, then [B, 1, H] per generated token fed back."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), eos, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    calls: list[torch.Tensor] = []
    hook = base.decoder.norm.register_forward_hook(lambda module, args, output: calls.append(output.detach())) \
        if keep_hidden else None
    try:
        out = base.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                  eos_token_id=eos, pad_token_id=eos)[:, width:]
    finally:
        if hook is not None:
            hook.remove()
    responses = [row[: row.index(eos) + 1] if eos in row else row for row in out.tolist()]
    return responses, calls


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
        stored: dict[str, np.ndarray] = {}
        for i, sequence in enumerate(sequences):
            ids = sequence["prompt_ids"] + sequence["response_ids"]
            if "hidden_file" in sequence:  # rows generation already computed (self-distilled responses)
                source = stored.get(sequence["hidden_file"])
                if source is None:
                    source = stored[sequence["hidden_file"]] = np.memmap(sequence["hidden_file"], np.float16, "r")
                start = sequence["hidden_row"] * shape[1]
                hidden[offsets[i] : offsets[i + 1]] = source[start : start + len(ids) * shape[1]].reshape(len(ids), -1)
            else:
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
