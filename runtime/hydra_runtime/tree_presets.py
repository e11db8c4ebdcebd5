"""Named speculation trees.

A tree is a list of *choices*: each choice is the path of top-k ranks from the root
(the base model's own next token) to one node. ``(0, 1)`` is the second-best candidate
of head 2 below the best candidate of head 1. The root itself is implicit.
"""

Choices = tuple[tuple[int, ...], ...]

# The 63-node tree Medusa and Hydra use on 7B models (tuned on MT-Bench with Vicuna-7B).
MC_SIM_7B_63: Choices = (
    (0,), (0, 0), (1,), (0, 1), (2,), (0, 0, 0), (1, 0), (0, 2), (3,), (0, 3), (4,),
    (0, 4), (2, 0), (0, 5), (0, 0, 1), (5,), (0, 6), (6,), (0, 7), (0, 1, 0), (1, 1),
    (7,), (0, 8), (0, 0, 2), (3, 0), (0, 9), (8,), (9,), (1, 0, 0), (0, 2, 0), (1, 2),
    (0, 0, 3), (4, 0), (2, 1), (0, 0, 4), (0, 0, 5), (0, 0, 0, 0), (0, 1, 1), (0, 0, 6),
    (0, 3, 0), (5, 0), (1, 3), (0, 0, 7), (0, 0, 8), (0, 0, 9), (6, 0), (0, 4, 0), (1, 4),
    (7, 0), (0, 1, 2), (2, 0, 0), (3, 1), (2, 2), (8, 0), (0, 5, 0), (1, 5), (1, 0, 1),
    (0, 2, 1), (9, 0), (0, 6, 0), (0, 0, 0, 1), (1, 6), (0, 7, 0),
)

# Small trees for CPUs, where verifying more than ~16 nodes stops being nearly free.
# Node counts below include the root.
CHAIN_4: Choices = ((0,), (0, 0), (0, 0, 0), (0, 0, 0, 0))  # 5 nodes
TREE_8: Choices = ((0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0))
TREE_16: Choices = (
    (0,), (1,), (2,), (3,),
    (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0),
    (0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0),
    (0, 0, 0, 0),
)
TREE_24: Choices = (
    (0,), (1,), (2,), (3,), (4,),
    (0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (2, 0), (3, 0),
    (0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0), (1, 0, 0), (0, 2, 0),
    (0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 1, 0), (0, 1, 0, 0),
)

TREE_PRESETS: dict[str, Choices] = {
    "mc_sim_7b_63": MC_SIM_7B_63,
    "chain4": CHAIN_4,
    "tree8": TREE_8,
    "tree16": TREE_16,
    "tree24": TREE_24,
}
