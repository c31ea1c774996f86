"""Two-tower retrieval model: product tower (image + text + fusion) and query tower.

Build with :meth:`MultimodalModel.from_config`, persist with ``save``/``load``; encode with
``encode_products``/``encode_queries``. Backbone features are cached on disk (``feature_cache``),
so training and re-encoding skip the expensive backbones.
"""

from mm_opensearch.towers.config import (
    FusionType,
    ImageBackboneSpec,
    ImagePreprocess,
    ModelConfig,
    TextBackboneSpec,
)
from mm_opensearch.towers.default import load_default_model
from mm_opensearch.towers.feature_cache import FeatureCache
from mm_opensearch.towers.heads import ProductVectors
from mm_opensearch.towers.model import EncoderInput, MultimodalModel, ProductEncoding, ProductInput

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
