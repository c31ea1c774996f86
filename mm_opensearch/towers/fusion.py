"""Modality fusion networks: combine a product's text and image projections into one vector.

Every fusion takes the L2-normalised text and image projections ``t`` and ``i`` (n, dim) of rows
that have both modalities, plus the projected image tokens, and returns an unnormalised (n, dim)
vector. Learned residuals start at zero, so an untrained fusion is the plain average of the two
modalities: the fused space begins where the single-modality fallbacks (rows missing a modality)
live, and training moves it only as far as the data asks.
"""

from __future__ import annotations

import torch
from torch import nn

from mm_opensearch.errors import ConfigError
from mm_opensearch.towers.config import FusionType

__all__ = [
    "WeightedSumFusion",
    "ConcatMLPFusion",
    "GatedFusion",
    "CrossAttentionFusion",
    "FUSIONS",
    "build_fusion",
]


def _zero_init(layer: nn.Linear) -> nn.Linear:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class WeightedSumFusion(nn.Module):
    """Two learned modality weights (softmax): the cheapest fusion, a strong baseline."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        del dim  # same signature as the other fusions
        self.logits = nn.Parameter(torch.zeros(2))

    def forward(self, t: torch.Tensor, i: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        del tokens
        weights = torch.softmax(self.logits, dim=0)
        return weights[0] * t + weights[1] * i


class ConcatMLPFusion(nn.Module):
    """MLP over [t, i, t*i] added to the average: the product term exposes cross-modal agreement."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        hidden = hidden_dim or 2 * dim
        self.mlp = nn.Sequential(nn.Linear(3 * dim, hidden), nn.GELU(), _zero_init(nn.Linear(hidden, dim)))

    def forward(self, t: torch.Tensor, i: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        del tokens
        return 0.5 * (t + i) + self.mlp(torch.cat([t, i, t * i], dim=-1))


class GatedFusion(nn.Module):
    """A learned per-dimension sigmoid gate chooses, dimension by dimension, text or image."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = _zero_init(nn.Linear(2 * dim, dim))  # gate 0.5 everywhere before training

    def forward(self, t: torch.Tensor, i: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        del tokens
        gate = torch.sigmoid(self.gate(torch.cat([t, i], dim=-1)))
        return gate * t + (1.0 - gate) * i


class CrossAttentionFusion(nn.Module):
    """The text vector attends over the image's pooled vector and spatial tokens, then projects.

    Attention lets the text pick the image regions it is about (the sleeve, the print), which a
    pooled image vector averages away.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            msg = f"attention_heads={heads} must divide dim={dim}; choose e.g. attention_heads=4 with dim=256"
            raise ConfigError(msg)
        self.query_norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out = nn.Sequential(nn.LayerNorm(dim), _zero_init(nn.Linear(dim, dim)))

    def forward(self, t: torch.Tensor, i: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        keys = torch.cat([i.unsqueeze(1), tokens], dim=1)
        attended, _ = self.attention(self.query_norm(t).unsqueeze(1), keys, keys, need_weights=False)
        return 0.5 * (t + i) + self.out(attended.squeeze(1))


FUSIONS: tuple[FusionType, ...] = ("weighted_sum", "concat_mlp", "gated", "cross_attention")


def build_fusion(kind: FusionType, *, dim: int, hidden_dim: int, heads: int) -> nn.Module:
    """The fusion module ``kind`` names (see ``ModelConfig.fusion``)."""
    if kind == "weighted_sum":
        return WeightedSumFusion(dim)
    if kind == "concat_mlp":
        return ConcatMLPFusion(dim, hidden_dim)
    if kind == "gated":
        return GatedFusion(dim)
    if kind == "cross_attention":
        return CrossAttentionFusion(dim, heads)
    msg = f"fusion '{kind}' is unknown; choose one of {list(FUSIONS)}"
    raise ConfigError(msg)
