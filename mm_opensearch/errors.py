"""Exceptions raised by mm-opensearch.

Every message names what was wrong and the fix, so a CLI user or an API client can act on it.

    MMOpenSearchError
     ├── ConfigError            a setting or an input field is invalid
     ├── DevServiceError        the local OpenSearch/Redis could not be fetched, started or stopped
     ├── ImageLoadError         an image could not be fetched or decoded (the product keeps its text)
     ├── ModelError             a model artifact is missing, corrupt, or of another model than expected
     ├── IndexCompatibilityError  an index's vectors were made by another model or have another dimension
     ├── SearchUnavailableError OpenSearch could not be reached (the API answers 503)
     ├── PermissionDeniedError  OpenSearch refused the configured user: a privilege, its credentials (API 403)
     └── RedisUnavailableError  Redis (broker, job state) could not be reached
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, get_args

__all__ = [
    "check_choice",
    "MMOpenSearchError",
    "ConfigError",
    "DevServiceError",
    "ImageLoadError",
    "ModelError",
    "IndexCompatibilityError",
    "SearchUnavailableError",
    "PermissionDeniedError",
    "permission_denied",
    "RedisUnavailableError",
]


class MMOpenSearchError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(MMOpenSearchError, ValueError):
    """A setting or an input field is invalid; the message names the field and the fix."""


def check_choice(field: str, value: object, choices: Any) -> None:
    """Refuse ``value`` unless it is one of the ``Literal`` type ``choices``: one list, in the type and the message."""
    allowed = get_args(choices)
    if value not in allowed:
        msg = f"{field} '{value}' is unknown; use one of {', '.join(map(str, allowed))}"
        raise ConfigError(msg)


class DevServiceError(MMOpenSearchError):
    """A local development service (OpenSearch node, Redis) failed; the message says how to fix it."""


class ImageLoadError(MMOpenSearchError):
    """An image could not be loaded. ``reason`` is a short machine-readable code."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ModelError(MMOpenSearchError):
    """A model artifact is missing, unreadable, or not the model that was expected."""


class IndexCompatibilityError(MMOpenSearchError):
    """An index holds vectors of another model or dimension than the tower in use."""


class SearchUnavailableError(MMOpenSearchError):
    """OpenSearch did not answer; retrying later may help."""


class RedisUnavailableError(MMOpenSearchError):
    """Redis (the Celery broker and the job state) did not answer; the message names MMOS_REDIS_URL."""


class PermissionDeniedError(MMOpenSearchError):
    """OpenSearch refused the configured user: a privilege it lacks (``privilege``, the action the plugin
    named), or its credentials. The fix is the operator's, so the message names the setting or the role."""

    def __init__(self, message: str, *, privilege: str | None = None) -> None:
        super().__init__(message)
        self.privilege = privilege


# How the security plugin words a refusal: "no permissions for [indices:data/read/search] and User [name=u, ..."
_NO_PERMISSIONS = re.compile(r"no permissions for \[([^\]]*)\](?: and User \[name=([^,\]]+))?")


def _reason(info: object) -> str:
    if isinstance(info, Mapping):
        error = info.get("error")
        if isinstance(error, Mapping):
            return str(error.get("reason") or "")
        return str(error or "")
    return str(info or "")


def permission_denied(info: object, doing: str) -> PermissionDeniedError:
    """The error for a 403 answered while ``doing`` (e.g. "search index 'products'"): it names the
    privilege the plugin says is missing (``info`` is the answer's body) and where to grant it."""
    reason = _reason(info)
    found = _NO_PERMISSIONS.search(reason)
    if found is None:
        msg = (
            f"OpenSearch refused to {doing} (403: {reason[:200] or 'forbidden'}); the configured user "
            "(MMOS_OPENSEARCH_USER or the client certificate) lacks a privilege for it, see docs/security.md"
        )
        return PermissionDeniedError(msg)
    privilege, user = found.group(1), found.group(2)
    who = f"OpenSearch user '{user}'" if user else "the configured OpenSearch user"
    msg = (
        f"{who} lacks the privilege {privilege} needed to {doing} (403); grant it to the user's role, or use a "
        "user with the mm-opensearch role for this (docs/security.md)"
    )
    return PermissionDeniedError(msg, privilege=privilege)
