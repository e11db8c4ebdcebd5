"""Per-head losses and accuracies on batches of cached base hidden states.

Head k at position t predicts x[t+2+k]. Its teacher is the base model's distribution at
position t+1+k (the one that predicts that same token). Sequential heads see the
embeddings of x[t+1]..x[t+1+k], the tokens that would have been speculated before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..heads import BaseProjections, DraftHeads

HEAD_LOSS_DECAY = 0.8  # deeper heads are harder and matter less: weight 0.8^k (as Medusa trains)


@dataclass
class HeadInputs:
    """The rows one head trains on, gathered from a padded batch. n = number of rows."""

    context: torch.Tensor  # [n, H]
    path_tokens: torch.Tensor  # [n, k+1]: x[t+1] .. x[t+1+k]
    target_tokens: torch.Tensor  # [n]: x[t+2+k]
    teacher_hidden: torch.Tensor  # [n, H]: base hidden state at t+1+k


def head_inputs(k: int, context, hidden, tokens, lengths, prompt_lengths) -> HeadInputs:
    """context, hidden [B, T, H]; tokens [B, T]; lengths, prompt_lengths [B]."""
    positions = torch.arange(tokens.shape[1])[None]  # [1, T]
    # Predictions start at the prompt's last token (the first draft after prefill).
    valid = (positions >= prompt_lengths[:, None] - 1) & (positions + 2 + k <= lengths[:, None] - 1)
    rows, cols = valid.nonzero(as_tuple=True)
    offsets = torch.arange(k + 1)[None]
    return HeadInputs(
        context=context[rows, cols],
        path_tokens=tokens[rows[:, None], cols[:, None] + 1 + offsets],
        target_tokens=tokens[rows, cols + 2 + k],
        teacher_hidden=hidden[rows, cols + 1 + k],
    )


def head_logits(heads: DraftHeads, k: int, inputs: HeadInputs, base: BaseProjections,
                vocab: torch.Tensor | None, input_noise: float = 0.0) -> torch.Tensor:
    """[n, V'] student logits, over ``vocab`` (a token subset) when given, else the full vocabulary."""
    embeds = base.embed_tokens(inputs.path_tokens)  # [n, k+1, H]
    if input_noise > 0:
        embeds = embeds + input_noise * torch.randn_like(embeds)
    hidden = heads.head_hidden(k, inputs.context, embeds)
    if vocab is None:
        return heads.project(k, hidden, base)
    lm_head = heads.lm_heads[k] if heads.lm_heads is not None else base.lm_head
    bias = lm_head.bias[vocab] if lm_head.bias is not None else None
    return F.linear(heads.dropout(hidden), lm_head.weight[vocab], bias)


def teacher_logits(inputs: HeadInputs, base: BaseProjections, vocab: torch.Tensor | None) -> torch.Tensor:
    with torch.no_grad():
        weight = base.lm_head.weight if vocab is None else base.lm_head.weight[vocab]
        return F.linear(inputs.teacher_hidden, weight)


def head_loss(student: torch.Tensor, inputs: HeadInputs, base: BaseProjections, vocab, vocab_index, loss: str):
    """Distillation (KL to the teacher, over the same vocabulary) or cross-entropy on the data."""
    if loss == "distill":
        teacher = F.log_softmax(teacher_logits(inputs, base, vocab), dim=-1)
        return F.kl_div(F.log_softmax(student, dim=-1), teacher, log_target=True, reduction="batchmean")
    targets = inputs.target_tokens if vocab_index is None else vocab_index[inputs.target_tokens]
    return F.cross_entropy(student, targets, ignore_index=-1)


@torch.no_grad()
def truth_rank_counts(heads: DraftHeads, k: int, inputs: HeadInputs, base: BaseProjections,
                      max_rank: int = 10) -> tuple[np.ndarray, int]:
    """How often the base model's own argmax is head k's rank-r candidate: counts [max_rank], rows."""
    counts = np.zeros(max_rank, dtype=np.int64)
    if inputs.context.shape[0] == 0:
        return counts, 0
    truth = teacher_logits(inputs, base, None).argmax(dim=-1)  # [n]
    top = head_logits(heads, k, inputs, base, None).topk(max_rank, dim=-1).indices  # [n, max_rank]
    hits = (top == truth[:, None]).nonzero(as_tuple=True)[1]  # rank of each found truth
    counts += np.bincount(hits.numpy(), minlength=max_rank)
    return counts, int(truth.numel())
