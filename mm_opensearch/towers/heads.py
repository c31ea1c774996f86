"""The trainable part of both towers: projection heads, fusion, missing-modality handling.

These modules consume backbone *features*, never raw inputs, so training runs on cached features
alone and the encode path calls exactly the same forward (no second copy of the head logic).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mm_opensearch.towers.config import ModelConfig
from mm_opensearch.towers.fusion import build_fusion

__all__ = ["ProjectionHead", "ProductVectors", "ProductHeads", "QueryHead"]


class ProjectionHead(nn.Module):
    """LayerNorm + MLP (or linear) from a backbone's feature size into the shared space.

    The LayerNorm puts backbones of very different scales (unit-norm MiniLM, ReLU6 CNN maps) on
    the same footing before the first trainable layer.
    """

    def __init__(self, in_dim: int, out_dim: int, *, hidden_dim: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.LayerNorm(in_dim)]
        if hidden_dim:
            layers += [nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim)]
        else:
            layers.append(nn.Linear(in_dim, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


@dataclass(frozen=True)
class ProductVectors:
    """Product tower output: all (n, dim), L2-normalised; masks say which modality a row used.

    ``text``/``image`` rows whose mask is False are projections of absent inputs: losses must
    mask them and indexers must skip them.
    """

    fused: torch.Tensor
    text: torch.Tensor
    image: torch.Tensor
    text_mask: torch.Tensor
    image_mask: torch.Tensor


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(x.float(), dim=-1)


class ProductHeads(nn.Module):
    """Per-modality projections plus fusion, robust to a missing text or image per row."""

    def __init__(self, config: ModelConfig, *, text_dim: int, image_dim: int, token_dim: int | None = None) -> None:
        super().__init__()
        dim, hidden, dropout = config.dim, config.head_hidden_dim, config.head_dropout
        self.text_head = ProjectionHead(text_dim, dim, hidden_dim=hidden, dropout=dropout)
        self.image_head = ProjectionHead(image_dim, dim, hidden_dim=hidden, dropout=dropout)
        self.token_head = (
            ProjectionHead(token_dim or image_dim, dim) if config.fusion == "cross_attention" else None
        )
        self.fusion = build_fusion(config.fusion, dim=dim, hidden_dim=hidden, heads=config.attention_heads)
        self.modality_dropout = config.modality_dropout

    def _drop_modalities(
        self, text_mask: torch.Tensor, image_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Train mode: hide one modality of some complete rows, so fallbacks stay in the fused space."""
        both = text_mask & image_mask
        dropped = both & (torch.rand(both.shape, device=both.device) < self.modality_dropout)
        drop_text = dropped & (torch.rand(both.shape, device=both.device) < 0.5)
        return text_mask & ~drop_text, image_mask & ~(dropped & ~drop_text)

    def forward(
        self,
        text: torch.Tensor,
        image: torch.Tensor,
        image_tokens: torch.Tensor,
        text_mask: torch.Tensor,
        image_mask: torch.Tensor,
    ) -> ProductVectors:
        """Fuse rows with both modalities; a row with one falls back to that modality's projection.

        ``text`` (n, text_dim), ``image`` (n, image_dim), ``image_tokens`` (n, k, image_dim); rows
        whose mask is False may hold anything (zeros by convention). Every row needs one modality.
        """
        text_mask, image_mask = text_mask.bool(), image_mask.bool()
        if not bool((text_mask | image_mask).all()):
            rows = torch.nonzero(~(text_mask | image_mask)).flatten().tolist()[:10]
            msg = f"rows {rows} have neither text nor image features; drop them before the tower"
            raise ValueError(msg)
        if self.training and self.modality_dropout > 0:
            text_mask, image_mask = self._drop_modalities(text_mask, image_mask)
        t = _normalize(self.text_head(text))
        i = _normalize(self.image_head(image))
        tokens = self.token_head(image_tokens) if self.token_head is not None else image_tokens
        fused = self.fusion(t, i, tokens)
        single = torch.where(text_mask.unsqueeze(-1), t, i)
        fused = torch.where((text_mask & image_mask).unsqueeze(-1), fused, single)
        return ProductVectors(_normalize(fused), t, i, text_mask, image_mask)


class QueryHead(nn.Module):
    """Projects query text features into the product space (its own weights, even on a shared backbone)."""

    def __init__(self, config: ModelConfig, *, text_dim: int) -> None:
        super().__init__()
        self.head = ProjectionHead(
            text_dim, config.dim, hidden_dim=config.head_hidden_dim, dropout=config.head_dropout
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return _normalize(self.head(features))
