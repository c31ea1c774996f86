"""A model's identity and its artifact folder: what its weights are, how they are saved and checked.

:mod:`artifact` writes and reads the files; this module knows which tensors of a composed model
go into them (heads, and the weights of random-init backbones), memoises the content-hash id, and
refuses to load an artifact whose id no longer matches what the installed backbones produce.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mm_opensearch.errors import ModelError
from mm_opensearch.towers.artifact import compute_model_id, read_artifact, write_artifact
from mm_opensearch.towers.backbone_base import ImageBackbone, TextBackbone

if TYPE_CHECKING:
    from mm_opensearch.towers.model import MultimodalModel

__all__ = ["ModelIdentity", "load_model", "save_model", "state_section"]


def state_section(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix``, with the prefix removed."""
    return {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}


class ModelIdentity:
    """The tensors that make a model what it is, and its content-hash id (memoised)."""

    def __init__(self, model: MultimodalModel) -> None:
        self.model = model
        self._memo: tuple[object, str] | None = None

    def backbones(self) -> dict[str, TextBackbone | ImageBackbone]:
        """Backbones by role; the query role only when the query tower has its own."""
        model = self.model
        roles: dict[str, TextBackbone | ImageBackbone] = {"text": model.text_backbone, "image": model.image_backbone}
        if model.config.query_backbone is not None:
            roles["query"] = model.query_backbone
        return roles

    def backbone_ids(self) -> dict[str, str | None]:
        return {role: backbone.backbone_id for role, backbone in self.backbones().items()}

    def state(self) -> dict[str, torch.Tensor]:
        """Every tensor an artifact stores: heads, then the weights of random-init backbones."""
        state = {f"heads.{k}": v for k, v in self.model.heads.state_dict().items()}
        for role, backbone in self.backbones().items():
            state.update({f"backbones.{role}.{k}": v for k, v in backbone.saved_state().items()})
        return state

    @property
    def model_id(self) -> str:
        """Content hash of config, backbones and weights; follows weight changes made in training.

        Hashing megabytes of weights on every access would slow per-document checks, so the id is
        memoised on a cheap stamp: the config and each tensor's storage and in-place version
        counter (which optimizer steps and ``load_state_dict`` both bump).
        """
        state = self.state()
        stamp = (
            self.model.config.model_dump_json(exclude={"provenance"}),
            tuple((key, value.data_ptr(), value._version) for key, value in state.items()),
        )
        if self._memo is None or self._memo[0] != stamp:
            self._memo = (stamp, compute_model_id(self.model.config, self.backbone_ids(), state))
        return self._memo[1]


def save_model(model: MultimodalModel, folder: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``folder``; returns the folder."""
    folder = Path(folder)
    text, image, query = model.text_backbone, model.image_backbone, model.query_backbone
    backbones: dict[str, dict[str, Any] | None] = {
        "text": {"id": text.backbone_id, "dim": text.dim, "max_length": text.max_length},
        "image": {
            "id": image.backbone_id,
            "dim": image.dim,
            "num_tokens": image.num_tokens,
            "preprocess": image.preprocess.model_dump(mode="json"),
        },
        "query": None
        if model.config.query_backbone is None
        else {"id": query.backbone_id, "dim": query.dim, "max_length": query.max_length},
    }
    write_artifact(folder, config=model.config, model_id=model.model_id, backbones=backbones,
                   state=model.identity.state())
    return folder


def load_model(cls: type[MultimodalModel], folder: str | Path, **kwargs: Any) -> MultimodalModel:
    """Load an artifact folder and check that it still is the model its id names.

    A different id means the installed backbone packages ship other weights than the ones the
    heads were trained on (or the files were altered): the vectors would be of another space.
    """
    folder = Path(folder)
    config, document, state = read_artifact(folder)
    model = cls(config, **kwargs)
    try:
        for role, backbone in model.identity.backbones().items():
            backbone.load_saved_state(state_section(state, f"backbones.{role}."))
        model.heads.load_state_dict(state_section(state, "heads."))
    except (RuntimeError, ValueError) as e:
        msg = f"weights in {folder} do not fit its config.json ({e}); the artifact is corrupt"
        raise ModelError(msg) from e
    expected = document.get("model_id")
    if model.model_id != expected:
        recorded = {role: (info or {}).get("id") for role, info in document.get("backbones", {}).items()}
        current = model.identity.backbone_ids()
        changed = [role for role in current if current[role] != recorded.get(role)]
        cause = (
            f"backbone(s) {changed} now have id(s) {[current[r] for r in changed]}, the artifact "
            f"was trained on {[recorded.get(r) for r in changed]}: install the backbone packages "
            "it was trained with, or re-train"
            if changed
            else "its weights were altered after saving: re-save or re-train it"
        )
        msg = f"model in {folder} has id {model.model_id}, config.json says {expected}; {cause}"
        raise ModelError(msg)
    return model
