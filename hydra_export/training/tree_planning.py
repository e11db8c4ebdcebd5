"""Choosing a tree for trained heads: decode traces on tuning prompts -> the best split of each
node budget between drafted nodes and the copy chain, and every preset scored the same way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hydra_runtime.decode_simulator import DecodeTrace, simulate
from hydra_runtime.tree import TreeBuffers
from hydra_runtime.tree_presets import TREE_PRESETS
from hydra_runtime.tree_search import search_trees

from ..base_model import BaseModel
from ..benchmark import read_prompts
from ..default_models import cache_root
from ..heads import DraftHeads
from .decode_traces import MAX_RANK, answer_cache_file, decode_traces, greedy_answers


def traces_for_prompts(base: BaseModel, heads: DraftHeads, model_name: str, prompts: Path, limit: int,
                       max_new_tokens: int, progress: Callable[[str, int, int], None]) -> list[DecodeTrace]:
    """Greedy answers (cached under the hydra-export cache) to the first ``limit`` prompts, ranked by ``heads``."""
    conversations = read_prompts(prompts, limit)
    prompt_ids = [list(base.tokenizer.apply_chat_template([{"role": "user", "content": c.turns[0]}],
                                                          add_generation_prompt=True, tokenize=True,
                                                          return_dict=False)) for c in conversations]
    cache_file = answer_cache_file(cache_root() / "answers", model_name, prompt_ids, max_new_tokens)
    done = [0]

    def step(stage: str, total: int):
        def advance(n: int):
            done[0] += n
            progress(stage, done[0], total)
        return advance

    answers = greedy_answers(base, prompt_ids, max_new_tokens, cache_file, step("greedy answers", len(prompt_ids)))
    done[0] = 0
    return decode_traces(base, heads, prompt_ids, answers, step("rank the heads' drafts", len(prompt_ids)))


def plan_trees(traces: list[DecodeTrace], budgets: list[int], copy_lengths: list[int], num_heads: int) -> dict:
    """The best tree of each budget, and each preset (no chain, and with each chain length) for comparison."""
    presets = {}
    for name, choices in TREE_PRESETS.items():
        if max(len(c) for c in choices) > num_heads or max(max(c) for c in choices) >= MAX_RANK:
            continue
        presets[name] = {str(copy): round(simulate(TreeBuffers.from_choices(choices, copy_nodes=copy), traces)
                                          .mean_accepted_length, 4) for copy in sorted({0, *copy_lengths})}
    steps = sum(len(trace.response_ids) for trace in traces)
    return {"prompts": len(traces), "answer_tokens": steps,
            "trees": search_trees(traces, budgets, copy_lengths, MAX_RANK), "presets": presets}
