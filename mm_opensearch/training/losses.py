"""Contrastive losses for aligning the query tower with product vectors."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["LogitScale", "info_nce"]


class LogitScale(nn.Module):
    """Learnable inverse temperature, stored as a log and clamped like CLIP's (max 100)."""

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def forward(self) -> torch.Tensor:
        return self.log_scale.clamp(max=math.log(100.0)).exp()


def info_nce(
    queries: torch.Tensor,
    items: torch.Tensor,
    scale: torch.Tensor,
    *,
    known_relevant: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    hard: torch.Tensor | None = None,
    hard_blocked: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives; row i's positive is item i.

    ``known_relevant[a, b]`` marks item b as relevant to query a by the labels: such an off-diagonal
    pair is no negative, so it is masked out instead of pushed apart. ``valid[i]`` False drops row i
    (e.g. a product without an image) both as an anchor and as a negative. ``hard`` (h, dim): extra
    negatives for every query (query -> item direction only); ``hard_blocked[a, j]`` True keeps
    hard item j out of query a's candidates (relevant to it, or absent).
    """
    n = queries.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=queries.device)
    blocked = torch.zeros_like(eye)
    if known_relevant is not None:
        blocked |= known_relevant.bool() & ~eye
    if valid is not None:
        blocked |= ~valid.bool().unsqueeze(0)  # invalid items are nobody's negative
    logits = scale * queries @ items.T
    q2i = logits.masked_fill(blocked, float("-inf"))
    i2q = logits.T.masked_fill(blocked.T, float("-inf"))
    if hard is not None:
        extra = scale * queries @ hard.T
        if hard_blocked is not None:
            extra = extra.masked_fill(hard_blocked.bool(), float("-inf"))
        q2i = torch.cat([q2i, extra], dim=1)
    target = torch.arange(n, device=queries.device)
    rows = valid.bool() if valid is not None else torch.ones(n, dtype=torch.bool, device=queries.device)
    if not bool(rows.any()):
        return queries.sum() * 0.0
    loss_q = nn.functional.cross_entropy(q2i[rows], target[rows])
    loss_i = nn.functional.cross_entropy(i2q[rows], target[rows])
    return (loss_q + loss_i) / 2
