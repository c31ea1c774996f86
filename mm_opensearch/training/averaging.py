"""Exponential moving average of the trained weights (Polyak averaging).

One training is a draw: features that differ only in their last bits, or another seed, move
the fused vector's nDCG@10 by about 0.01 (docs/quality.md). Ranking with an average of the
recent weights instead of the last step's smooths the step-to-step noise that the dev slice's
early stopping would otherwise pick from.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from mm_opensearch.errors import ConfigError

__all__ = ["WeightAverage", "check_decay"]


def check_decay(decay: float) -> None:
    """Fail before any work is done when the decay cannot average."""
    if not 0.0 < decay < 1.0:
        msg = f"weight_average (--weight-average) must be in (0, 1), got {decay}: e.g. 0.99, or 0 to turn averaging off"
        raise ConfigError(msg)


class WeightAverage:
    """A shadow copy of ``params`` updated after every optimiser step.

    The decay warms up as ``min(decay, (1 + t) / (10 + t))`` so the first epochs are not
    dominated by the random initial weights.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter], decay: float) -> None:
        check_decay(decay)
        self.params = list(params)
        self.decay = decay
        self.steps = 0
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for shadow, param in zip(self.shadow, self.params, strict=True):
            shadow.lerp_(param.detach(), 1.0 - decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The parameters hold the averaged weights inside the block, their own outside it."""
        with torch.no_grad():
            own = [p.detach().clone() for p in self.params]
            for param, shadow in zip(self.params, self.shadow, strict=True):
                param.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, saved in zip(self.params, own, strict=True):
                    param.copy_(saved)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        for shadow, saved in zip(self.shadow, state["shadow"], strict=True):
            shadow.copy_(saved)
