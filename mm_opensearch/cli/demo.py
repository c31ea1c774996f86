"""``mm-opensearch demo``: the main job end to end on the sample catalog."""

from __future__ import annotations


def demo() -> None:
    """Bring services up, index the sample catalog, answer queries and print metrics."""
    raise NotImplementedError
