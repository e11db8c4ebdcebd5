"""Replaying greedy tree decoding from teacher-forced head rankings, in milliseconds per tree.

Under greedy decoding the tokens are the base model's own whatever the tree, so a step that
starts after position t of the final sequence s (its context is the hidden state at t, its
root is s[t+1]) accepts, exactly:

- along the drafted tree, the longest path (r1, ..., ra) of the tree's choices where r_j is
  the rank of the true token s[t+1+j] among head j-1's candidates, given the true path before
  it (what teacher forcing measures: ``DecodeTrace.ranks``);
- along the copy chain, the leading tokens of the chain CopyDrafts sends that equal
  s[t+2], s[t+3], ...;

and emits 1 + the longer of the two. So one pass of the base model and the heads over a
sequence (see hydra_export/training/decode_traces.py) lets every tree be scored without
running the engine. What it leaves out: numerical ties between the engine's tree-shaped
forward and the teacher-forced one, and the end of generation (a real run's last step is
cut by max_new_tokens or EOS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .copy_drafts import NODES_PER_AGREED_TOKEN, CopyDrafts
from .step_costs import StepCosts
from .tree import TreeBuffers


@dataclass(frozen=True)
class DecodeTrace:
    """One prompt's greedy response and its heads' rankings of the true tokens.

    ranks[j, k]: with t = len(prompt_ids) - 1 + j, the rank of s[t+2+k] among head k's
    candidates drafted from the context at t and the true path s[t+1..t+1+k]; -1 when it is
    not among them (or past the end of the sequence). [len(response_ids), K] int16.
    """

    prompt_ids: np.ndarray  # [P] int64
    response_ids: np.ndarray  # [R] int64
    ranks: np.ndarray  # [R, K] int16


@dataclass(frozen=True)
class SimulatedRun:
    accepted_lengths: tuple[int, ...]  # tokens emitted per step, every trace's steps in order
    verified_rows: tuple[int, ...]  # rows each step verified: the drafted nodes + the chain sent
    copy_wins: int  # steps where the copy chain accepted more than the drafted tree

    @property
    def mean_accepted_length(self) -> float:
        return float(np.mean(self.accepted_lengths)) if self.accepted_lengths else 0.0

    @property
    def mean_verified_rows(self) -> float:
        return float(np.mean(self.verified_rows)) if self.verified_rows else 0.0

    def modelled_speedup(self, costs: StepCosts) -> float:
        """Tokens per unit of time over autoregressive decoding, each step costing
        ``costs.of(rows)`` one-token steps (measured per engine and machine: StepCosts)."""
        cost = sum(costs.of(rows) for rows in self.verified_rows)
        return sum(self.accepted_lengths) / cost if cost else 0.0


def simulate(tree: TreeBuffers, traces: list[DecodeTrace],
             nodes_per_agreed_token: int = NODES_PER_AGREED_TOKEN) -> SimulatedRun:
    """Greedy tree decoding with ``tree`` (its copy chain included, sent as CopyDrafts would with
    ``nodes_per_agreed_token``) replayed over ``traces``."""
    choices = set(tree.choices)
    lengths: list[int] = []
    rows: list[int] = []
    copy_wins = 0
    for trace in traces:
        sequence = np.concatenate([trace.prompt_ids, trace.response_ids]).tolist()
        start = len(trace.prompt_ids) - 1  # the prefill's context position; its root is the first response token
        lookup = CopyDrafts(tree.copy_nodes, sequence[: start + 2], nodes_per_agreed_token) if tree.copy_nodes else None
        t = start
        while t + 2 < len(sequence):  # a step needs a token after its root
            ranks = trace.ranks[t - start]
            drafted = 0
            while drafted < tree.max_depth and ranks[drafted] >= 0 and \
                    tuple(int(r) for r in ranks[: drafted + 1]) in choices:
                drafted += 1
            chain = lookup.propose() if lookup is not None else ()
            rows.append(tree.num_nodes + len(chain))
            copied = 0
            for token in chain:
                if t + 2 + copied >= len(sequence) or token != sequence[t + 2 + copied]:
                    break
                copied += 1
            room = len(sequence) - t - 3  # the next root must be in the sequence
            accepted = min(max(drafted, copied), room)
            copy_wins += min(copied, room) > min(drafted, room)
            lengths.append(accepted + 1)
            if lookup is not None:
                lookup.extend(sequence[t + 2 : t + 3 + accepted])  # the accepted drafts and the next root
            t += accepted + 1
    return SimulatedRun(tuple(lengths), tuple(rows), copy_wins)
