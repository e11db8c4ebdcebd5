"""Choosing a tree for trained heads: measured rank accuracies -> the best tree of each size."""

from __future__ import annotations

from hydra_runtime.tree_presets import TREE_PRESETS
from hydra_runtime.tree_search import expected_tokens_per_step, grow_tree

from ..heads.reference_formats import load_heads
from .recipe import TrainRecipe
from .trainer import Trainer


def plan_trees(recipe: TrainRecipe, sizes: list[int]) -> dict:
    """Rank accuracies of the recipe's trained heads on its held-out data, grown trees of the
    given node counts, and the expected tokens/step of every preset for comparison."""
    trainer = Trainer(recipe)
    trainer.heads = load_heads(recipe.output_dir, trainer.base.config)
    cache, _, held_out, _ = trainer.prepare_data()
    rank_probs = trainer.rank_probs(cache, held_out)
    grown = {}
    for size in sizes:
        choices, expected = grow_tree(rank_probs, size)
        grown[str(size)] = {"expected_tokens_per_step": round(expected, 4), "choices": [list(c) for c in choices]}
    presets = {
        name: round(expected_tokens_per_step(choices, rank_probs), 4)
        for name, choices in TREE_PRESETS.items()
        if max(len(c) for c in choices) <= rank_probs.shape[0] and max(max(c) for c in choices) < rank_probs.shape[1]
    }
    return {"rank_probs": rank_probs.round(5).tolist(), "grown": grown, "presets": presets}
