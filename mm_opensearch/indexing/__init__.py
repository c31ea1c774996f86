"""Index mappings, index creation and the bulk writer."""

from mm_opensearch.indexing.bulk import (
    BulkFailure,
    BulkReport,
    bulk_write,
    index_action,
    vector_fields_doc,
    vector_update_action,
)
from mm_opensearch.indexing.mappings import (
    VECTOR_FIELDS,
    check_model_compatible,
    model_meta,
    product_index_body,
    read_model_meta,
    vector_properties,
)

__all__ = [
    "VECTOR_FIELDS",
    "BulkFailure",
    "BulkReport",
    "bulk_write",
    "check_model_compatible",
    "index_action",
    "model_meta",
    "product_index_body",
    "read_model_meta",
    "vector_fields_doc",
    "vector_properties",
    "vector_update_action",
]
