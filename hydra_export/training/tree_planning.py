"""Choosing a tree for trained heads: decode traces on tuning prompts -> the best split of each
node budget between drafted nodes and the copy chain, and every preset scored the same way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hydra_runtime.decode_simulator import DecodeTrace, simulate
from hydra_runtime.step_costs import StepCosts
from hydra_runtime.tree import TreeBuffers
from hydra_runtime.tree_presets import TREE_PRESETS
from hydra_runtime.tree_search import search_trees

from ..base_model import BaseModel
from ..benchmark import read_prompts
from ..default_models import cache_root
from ..heads import DraftHeads
from .dataset import chat_prompt_ids
from .decode_traces import MAX_RANK, answer_cache_file, decode_traces, greedy_answers


def traces_for_prompts(base: BaseModel, heads: DraftHeads, model_name: str, prompts: Path, limit: int,
                       max_new_tokens: int, progress: Callable[[str, int, int], None]) -> list[DecodeTrace]:
    """Greedy answers (cached under the hydra-export cache) to the first ``limit`` prompts, ranked by ``heads``."""
    prompt_ids = [chat_prompt_ids(base, [{"role": "user", "content": conversation.turns[0]}])
                  for conversation in read_prompts(prompts, limit)]
    cache_file = answer_cache_file(cache_root() / "answers", model_name, prompt_ids, max_new_tokens)
    answers = greedy_answers(base, prompt_ids, max_new_tokens, cache_file, _counter("greedy answers", len(prompt_ids),
                                                                                    progress))
    return decode_traces(base, heads, prompt_ids, answers, _counter("rank the heads' drafts", len(prompt_ids),
                                                                     progress))


def _counter(stage: str, total: int, progress: Callable[[str, int, int], None]) -> Callable[[int], None]:
    """An ``advance(n)`` callback that reports ``stage`` and the running count to ``progress``."""
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        progress(stage, done, total)

    return advance


def plan_trees(traces: list[DecodeTrace], budgets: list[int], copy_lengths: list[int], num_heads: int,
               costs: StepCosts = StepCosts()) -> dict:
    """The best tree of each budget (see search_trees), and each preset (no chain, and with each
    chain length) for comparison."""
    presets = {}
    for name, choices in TREE_PRESETS.items():
        if max(len(c) for c in choices) > num_heads or max(max(c) for c in choices) >= MAX_RANK:
            continue
        presets[name] = {str(copy): round(simulate(TreeBuffers.from_choices(choices, copy_nodes=copy), traces)
                                          .mean_accepted_length, 4) for copy in sorted({0, *copy_lengths})}
    answer_tokens = sum(len(trace.response_ids) for trace in traces)
    return {"prompts": len(traces), "answer_tokens": answer_tokens,
            "step_costs": costs.as_dict(),
            "trees": search_trees(traces, budgets, copy_lengths, MAX_RANK, costs),
            "presets": presets}
