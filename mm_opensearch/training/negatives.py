"""Hard negatives: products that read like a query's answer but are not, so training must look closer.

In-batch negatives are random products: they rarely share the positive's type and differ only in
colour or pattern, which is what a shopper's query often turns on. A query's hard negatives are
the products its text is closest to (the frozen text backbone, the same for the multimodal and the
text-only tower, so neither gets an advantage) that the labels do not mark relevant, optionally
only those of the same ``group`` (e.g. article type) as the query's labelled products. On a catalog
whose text leaves the colour out, those are the same garment in other colours: the image has to
tell them apart. Mining reads only the catalog being trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mm_opensearch.training.data import TrainingData

__all__ = ["HardNegatives", "mine_hard_negatives"]


class HardNegatives:
    """Per query row, candidate product rows (best first); one is drawn per training pair and batch."""

    def __init__(self, candidates: list[torch.Tensor]) -> None:
        self.candidates = candidates

    def draw(self, query_rows: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(product rows, has one) for each query row; rows without candidates get row 0 and False."""
        rows = torch.zeros(len(query_rows), dtype=torch.long)
        present = torch.zeros(len(query_rows), dtype=torch.bool)
        for i, q in enumerate(query_rows.tolist()):
            pool = self.candidates[q]
            if len(pool):
                rows[i] = pool[int(torch.randint(len(pool), (1,), generator=generator))]
                present[i] = True
        return rows, present


def mine_hard_negatives(
    data: TrainingData,
    *,
    per_query: int = 20,
    groups: Sequence[str | None] | None = None,
    chunk: int = 512,
) -> HardNegatives:
    """The ``per_query`` products nearest each query by text features, minus the labelled relevant ones.

    ``groups``: a value per product row (``None`` = unknown); when given, only products of a group
    that one of the query's relevant products belongs to are candidates.
    """
    queries, texts = data.query_features, data.products.text
    if queries.shape[1] != texts.shape[1]:
        msg = (f"hard negatives compare queries and product texts on one text backbone; the query features are "
               f"{queries.shape[1]}-d and the product texts {texts.shape[1]}-d (a separate query_backbone)")
        raise ValueError(msg)
    products = torch.nn.functional.normalize(texts.float(), dim=1) * data.products.has_text[:, None]
    group_ids = _group_ids(groups) if groups is not None else None
    candidates: list[torch.Tensor] = []
    for start in range(0, len(queries), chunk):
        scores = torch.nn.functional.normalize(queries[start : start + chunk].float(), dim=1) @ products.T
        for offset, row in enumerate(scores):
            q = start + offset
            relevant = sorted(data.relevant[q])
            if relevant:
                row[relevant] = float("-inf")
            if group_ids is not None:
                wanted = {int(group_ids[r]) for r in relevant} - {-1}
                if wanted:
                    row[~torch.isin(group_ids, torch.tensor(sorted(wanted)))] = float("-inf")
            top = row.topk(min(per_query, len(row)))
            candidates.append(top.indices[torch.isfinite(top.values)])
    return HardNegatives(candidates)


def _group_ids(groups: Sequence[str | None]) -> torch.Tensor:
    names: dict[str, int] = {}
    return torch.tensor([-1 if g is None else names.setdefault(g, len(names)) for g in groups], dtype=torch.long)
