"""AWS Signature Version 4 for Amazon OpenSearch Service (``es``) and OpenSearch Serverless (``aoss``).

Our own signer (stdlib ``hmac``/``hashlib``) rather than opensearch-py's, so that what the client
sends is checked against AWS's published test vectors (tests/unit/test_sigv4.py) and so that the
API image needs no botocore just to sign. Every request carries ``x-amz-content-sha256`` (the hash
of the body as sent, compressed or not), which ``aoss`` requires and ``es`` accepts. Credentials
come from boto3's chain when it is installed (the ``aws`` extra: profiles, instance and container
roles, IRSA), else from the ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``
environment variables; refreshable credentials are frozen once per request so that the key id and
the secret always belong together.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import requests

from mm_opensearch.errors import ConfigError

__all__ = [
    "ALGORITHM",
    "Credentials",
    "SigV4Auth",
    "canonical_request",
    "default_credentials",
    "sign_headers",
    "string_to_sign",
]

ALGORITHM = "AWS4-HMAC-SHA256"
# Not signed: added or rewritten on the way (proxies, the HTTP library), or the signature itself.
_UNSIGNED_HEADERS = frozenset(
    {"authorization", "user-agent", "connection", "expect", "transfer-encoding", "accept-encoding", "x-amzn-trace-id"}
)


@dataclass(frozen=True)
class Credentials:
    """One consistent set of keys (a session token for temporary credentials)."""

    access_key: str
    secret_key: str
    token: str | None = None


def _quote(value: str) -> str:
    return quote(value, safe="-_.~")


def _canonical_query(query: str) -> str:
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((_quote(unquote(key)), _quote(unquote(value))))
    return "&".join(f"{key}={value}" for key, value in sorted(pairs))


def canonical_request(
    method: str, url: str, headers: Mapping[str, str], payload_hash: str
) -> tuple[str, str]:
    """The canonical request and its signed-header list, for ``headers`` as they go on the wire.

    The path is encoded once more as sent (what AWS expects of every service but S3, so an id with
    ``%2F`` in it is signed as ``%252F``); dot segments are not removed, OpenSearch paths have none.
    """
    parts = urlsplit(url)
    lowered: dict[str, list[str]] = {}
    for name, value in headers.items():
        key = name.lower().strip()
        if key not in _UNSIGNED_HEADERS:
            lowered.setdefault(key, []).append(" ".join(str(value).split()))
    if "host" not in lowered:
        lowered["host"] = [parts.netloc]
    names = sorted(lowered)
    canonical_headers = "".join(f"{name}:{','.join(lowered[name])}\n" for name in names)
    signed = ";".join(names)
    path = quote(parts.path or "/", safe="/~")
    body = "\n".join([method.upper(), path, _canonical_query(parts.query), canonical_headers, signed, payload_hash])
    return body, signed


def _scope(amz_date: str, region: str, service: str) -> str:
    return f"{amz_date[:8]}/{region}/{service}/aws4_request"


def string_to_sign(canonical: str, amz_date: str, region: str, service: str) -> str:
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{_scope(amz_date, region, service)}\n{digest}"


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def _signature(secret_key: str, to_sign: str, amz_date: str, region: str, service: str) -> str:
    key = _hmac(f"AWS4{secret_key}".encode(), amz_date[:8])
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def sign_headers(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | None,
    credentials: Credentials,
    region: str,
    service: str,
    *,
    now: datetime | None = None,
    sign_body: bool = True,
) -> dict[str, str]:
    """The headers to add to the request: ``X-Amz-Date``, the body hash, the token, ``Authorization``."""
    amz_date = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    payload_hash = hashlib.sha256(body or b"").hexdigest()
    added = {"X-Amz-Date": amz_date}
    if sign_body:
        added["X-Amz-Content-SHA256"] = payload_hash
    if credentials.token:
        added["X-Amz-Security-Token"] = credentials.token
    kept = {name: value for name, value in headers.items() if name.lower() not in {n.lower() for n in added}}
    canonical, signed = canonical_request(method, url, {**kept, **added}, payload_hash)
    signature = _signature(credentials.secret_key, string_to_sign(canonical, amz_date, region, service),
                           amz_date, region, service)
    added["Authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key}/{_scope(amz_date, region, service)}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    return added


class SigV4Auth(requests.auth.AuthBase):
    """``requests`` auth (opensearch-py's ``RequestsHttpConnection``) that signs each request when sent."""

    def __init__(self, credentials: Callable[[], Credentials], region: str, service: str) -> None:
        self.credentials = credentials
        self.region = region
        self.service = service

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body.encode() if isinstance(request.body, str) else request.body
        added = sign_headers(str(request.method), str(request.url), dict(request.headers), body,
                             self.credentials(), self.region, self.service)
        request.headers.update(added)
        return request


def _from_env() -> Credentials | None:
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not (key and secret):
        return None
    return Credentials(key, secret, os.environ.get("AWS_SESSION_TOKEN") or None)


def default_credentials() -> Callable[[], Credentials]:
    """A provider of current credentials: boto3's chain when installed, else the AWS_* variables."""
    try:
        import boto3  # noqa: PLC0415 - optional extra
    except ImportError:
        if _from_env() is None:
            msg = ("MMOS_OPENSEARCH_AWS_REGION is set but no AWS credentials were found: set AWS_ACCESS_KEY_ID and "
                   "AWS_SECRET_ACCESS_KEY, or pip install 'mm-opensearch[aws]' for profiles and instance roles")
            raise ConfigError(msg) from None
        return lambda: _from_env() or _missing()
    found: Any = boto3.Session().get_credentials()
    if found is None:
        msg = ("MMOS_OPENSEARCH_AWS_REGION is set but no AWS credentials were found; configure the AWS CLI "
               "(aws configure), an instance or container role, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        raise ConfigError(msg)

    def frozen() -> Credentials:
        current = found.get_frozen_credentials()
        return Credentials(current.access_key, current.secret_key, current.token)

    return frozen


def _missing() -> Credentials:
    msg = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY were unset while running"
    raise ConfigError(msg)
