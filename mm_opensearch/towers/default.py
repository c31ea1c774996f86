"""The model every command uses unless told otherwise: ``MMOS_MODEL_DIR``, else the packaged one."""

from __future__ import annotations

from typing import Any

from mm_opensearch.config import Settings
from mm_opensearch.errors import ModelError
from mm_opensearch.resources import default_model_dir
from mm_opensearch.towers.model import MultimodalModel

__all__ = ["load_default_model"]


def load_default_model(settings: Settings, **kwargs: Any) -> MultimodalModel:
    """Load ``settings.model_dir`` or the Myntra-trained default shipped with the package."""
    if settings.model_dir is not None:
        folder = settings.model_dir
    else:
        try:
            folder = default_model_dir()
        except FileNotFoundError as e:
            msg = "no model: set MMOS_MODEL_DIR to a model folder (mm-opensearch train --out DIR writes one)"
            raise ModelError(msg) from e
    if not (folder / "config.json").exists():
        msg = f"{folder} holds no model (config.json missing); point MMOS_MODEL_DIR at a folder written by train"
        raise ModelError(msg)
    return MultimodalModel.load(folder, settings=settings, **kwargs)
