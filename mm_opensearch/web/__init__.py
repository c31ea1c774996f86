"""The search page that ``mm-opensearch serve`` shows at ``/``: rendered by the API process from the
templates and static files in this package (no front-end build), beside the JSON API."""

from mm_opensearch.web.page import mount_page

__all__ = ["mount_page"]
