"""Two-tower retrieval model: product tower (image + text + fusion) and query tower.

Build with :meth:`MultimodalModel.from_config`, persist with ``save``/``load``; encode with
``encode_products``/``encode_queries``. Backbone features are cached on disk (``feature_cache``),
so training and re-encoding skip the expensive backbones.

The names below load lazily: the search install (``mm-opensearch[api]``) has no PyTorch and
imports the torch-free modules of this package (``config``, ``query_cache``, ``query_graph``)
without pulling the model code in.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "EncoderInput",
    "FeatureCache",
    "FusionType",
    "ImageBackboneSpec",
    "ImagePreprocess",
    "ModelConfig",
    "MultimodalModel",
    "ProductEncoding",
    "ProductInput",
    "ProductVectors",
    "TextBackboneSpec",
    "load_default_model",
]

_HOMES = {
    "FusionType": "config",
    "ImageBackboneSpec": "config",
    "ImagePreprocess": "config",
    "ModelConfig": "config",
    "TextBackboneSpec": "config",
    "load_default_model": "default",
    "FeatureCache": "feature_cache",
    "ProductVectors": "heads",
    "EncoderInput": "model",
    "MultimodalModel": "model",
    "ProductEncoding": "model",
    "ProductInput": "model",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
