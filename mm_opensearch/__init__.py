"""mm-opensearch: multimodal (image + text) product retrieval on top of an existing OpenSearch."""

from mm_opensearch.config import Settings, get_settings

__all__ = ["Settings", "get_settings", "__version__"]
__version__ = "0.1.0"
