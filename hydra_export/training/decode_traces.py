"""Decode traces for the simulator: the base model's greedy answers and the heads' rankings of them.

Answers are generated once per (model, prompts) and cached as jsonl (resumable; they do not
depend on the heads); rankings take one forward pass of the base model and one batched call
per head over each sequence, so scoring new heads on cached answers takes seconds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from hydra_runtime.decode_simulator import DecodeTrace

from ..base_model import BaseModel
from ..heads import BaseProjections, DraftHeads
from .dataset import generate_greedy

MAX_RANK = 10  # ranks past this count as misses (no tree drafts deeper ranks)
GENERATION_BATCH = 8


def answer_cache_file(cache_dir: Path, model_name: str, prompt_ids: list[list[int]], max_new_tokens: int) -> Path:
    key = hashlib.sha256(json.dumps([model_name, prompt_ids, max_new_tokens]).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"answers-{key}.jsonl"


@torch.no_grad()
def greedy_answers(base: BaseModel, prompt_ids: list[list[int]], max_new_tokens: int, cache_file: Path,
                   advance=lambda n: None) -> list[list[int]]:
    """The base model's greedy answer to each prompt (cut after EOS), appended to ``cache_file`` as made."""
    done: dict[int, list[int]] = {}
    if cache_file.is_file():
        for line in cache_file.read_text().splitlines():
            entry = json.loads(line)
            done[int(entry["index"])] = [int(token) for token in entry["response_ids"]]
    advance(len(done))
    todo = [i for i in range(len(prompt_ids)) if i not in done]
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    eos = base.tokenizer.eos_token_id
    with open(cache_file, "a") as sink:
        for start in range(0, len(todo), GENERATION_BATCH):
            batch = todo[start : start + GENERATION_BATCH]
            for index, response in zip(batch, generate_greedy(base, [prompt_ids[i] for i in batch],
                                                              max_new_tokens, eos)):
                done[index] = response
                sink.write(json.dumps({"index": index, "response_ids": response}) + "\n")
            sink.flush()
            advance(len(batch))
    return [done[i] for i in range(len(prompt_ids))]


@torch.no_grad()
def head_ranks(base: BaseModel, heads: DraftHeads, prompt: list[int], response: list[int]) -> np.ndarray:
    """[len(response), K] int16: see DecodeTrace.ranks."""
    hidden = base.decoder(input_ids=torch.tensor([prompt + response])).last_hidden_state[0]  # [L, H]
    return head_ranks_from_hidden(heads, BaseProjections(base.embed_tokens, base.lm_head), prompt, response, hidden)


@torch.no_grad()
def head_ranks_from_hidden(heads: DraftHeads, projections: BaseProjections, prompt: list[int], response: list[int],
                           hidden: torch.Tensor) -> np.ndarray:
    """The same from the base model's final-normed hidden states of prompt + response, [L, H]
    (cached ones, e.g. the trainer's: no base forward)."""
    sequence = torch.tensor([prompt + response])  # [1, L]
    length, start = sequence.shape[1], len(prompt) - 1
    context = heads.context(hidden[None], torch.arange(length)[None], heads.new_context_cache())[0]  # [L, H]
    num_heads = heads.config.num_heads
    ranks = np.full((len(response), num_heads), -1, dtype=np.int16)
    for k in range(num_heads):
        positions = torch.arange(start, length - 2 - k)  # t: s[t+2+k] exists
        if len(positions) == 0:
            continue
        path = sequence[0, positions[:, None] + 1 + torch.arange(k + 1)[None]]  # [n, k+1]: s[t+1..t+1+k]
        top = heads.draft_candidates(k, context[positions], path, projections, MAX_RANK)  # [n, MAX_RANK]
        hits = top == sequence[0, positions + 2 + k][:, None]
        found = hits.any(dim=1)
        ranks[(positions - start)[found].numpy(), k] = hits.float().argmax(dim=1)[found].numpy()
    return ranks


def decode_traces(base: BaseModel, heads: DraftHeads, prompt_ids: list[list[int]], answers: list[list[int]],
                  advance=lambda n: None) -> list[DecodeTrace]:
    heads = heads.eval()
    traces = []
    for prompt, response in zip(prompt_ids, answers):
        traces.append(DecodeTrace(np.asarray(prompt, dtype=np.int64), np.asarray(response, dtype=np.int64),
                                  head_ranks(base, heads, prompt, response)))
        advance(1)
    return traces
