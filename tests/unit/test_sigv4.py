"""SigV4 against AWS's published test vectors, and what the client sends to an ``aoss`` endpoint.

The vectors in tests/unit/data/sigv4 are AWS's SigV4 test suite (key AKIDEXAMPLE, region us-east-1,
service "service", 2015-08-30T12:36:00Z) as vendored by awslabs/aws-c-auth (see SOURCE.md there):
each case's canonical request, string to sign and Authorization header are AWS's, not ours.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mm_opensearch.aws import Credentials, canonical_request, sign_headers, string_to_sign
from mm_opensearch.client import create_client
from mm_opensearch.config import Settings
from mm_opensearch.errors import ConfigError

VECTORS = Path(__file__).parent / "data" / "sigv4"
CASES = sorted(p.name for p in VECTORS.iterdir() if p.is_dir())


def _parse_request(text: str) -> tuple[str, str, list[tuple[str, str]], bytes]:
    head, _, body = text.partition("\n\n")
    lines = head.split("\n")
    method, rest = lines[0].split(" ", 1)
    target = rest.rsplit(" ", 1)[0]  # the path may hold spaces (get-space-normalized)
    headers = [(name, value) for name, _, value in (line.partition(":") for line in lines[1:] if line)]
    return method, target, headers, body.encode()


def _case(name: str) -> dict[str, object]:
    folder = VECTORS / name
    context = json.loads((folder / "context.json").read_text())
    method, target, headers, body = _parse_request((folder / "request.txt").read_text())
    host = next(value for key, value in headers if key.lower() == "host")
    creds = context["credentials"]
    return {
        "method": method, "url": f"https://{host}{target}", "headers": dict(headers),
        "body": body, "credentials": Credentials(creds["access_key_id"], creds["secret_access_key"], creds.get("token")),
        "region": context["region"], "service": context["service"], "sign_body": context["sign_body"],
        "now": datetime.fromisoformat(context["timestamp"].replace("Z", "+00:00")),
        "canonical": (folder / "header-canonical-request.txt").read_text(),
        "string_to_sign": (folder / "header-string-to-sign.txt").read_text(),
        "authorization": next(line.split(":", 1)[1] for line in (folder / "header-signed-request.txt").read_text().splitlines()
                              if line.startswith("Authorization:")),
    }


def test_the_vendored_suite_is_there() -> None:
    assert len(CASES) >= 8, CASES


@pytest.mark.parametrize("name", CASES)
def test_signing_matches_the_aws_test_suite(name: str) -> None:
    case = _case(name)
    added = sign_headers(case["method"], case["url"], case["headers"], case["body"], case["credentials"],  # type: ignore[arg-type]
                         case["region"], case["service"], now=case["now"], sign_body=case["sign_body"])  # type: ignore[arg-type]

    assert added["Authorization"] == case["authorization"]
    assert added["X-Amz-Date"] == "20150830T123600Z"
    assert ("X-Amz-Content-SHA256" in added) is case["sign_body"]


@pytest.mark.parametrize("name", CASES)
def test_the_canonical_request_and_string_to_sign_match_the_suite(name: str) -> None:
    """Stage by stage: a wrong signature alone does not say which step is wrong."""
    case = _case(name)
    added = sign_headers(case["method"], case["url"], case["headers"], case["body"], case["credentials"],  # type: ignore[arg-type]
                         case["region"], case["service"], now=case["now"], sign_body=case["sign_body"])  # type: ignore[arg-type]
    headers = {**case["headers"], **{k: v for k, v in added.items() if k != "Authorization"}}  # type: ignore[dict-item]
    canonical, _ = canonical_request(case["method"], case["url"], headers, hashlib.sha256(case["body"]).hexdigest())  # type: ignore[arg-type]
    assert canonical == case["canonical"]
    assert string_to_sign(canonical, "20150830T123600Z", case["region"], case["service"]) == case["string_to_sign"]  # type: ignore[arg-type]


class _Recorder(BaseHTTPRequestHandler):
    """Answers every request with ``{}`` and keeps its method, path, headers and body."""

    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        type(self).seen.append((self.command, self.path, dict(self.headers.items()), body))
        payload = b'{"version": {"number": "2.19.1", "distribution": "opensearch"}, "hits": {"hits": []}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer  # noqa: N815

    def log_message(self, *args: object) -> None:  # the test's output stays clean
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


KEYS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token-1")


def test_every_request_to_aoss_carries_the_body_hash_and_a_valid_signature(
    endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEYS.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", KEYS.secret_key)
    monkeypatch.setenv("AWS_SESSION_TOKEN", KEYS.token or "")
    settings = Settings(opensearch_hosts=[endpoint], opensearch_aws_region="eu-west-1", opensearch_aws_service="aoss")
    client = create_client(settings, max_retries=0)

    client.info()
    client.index(index="products", id="a/b", body={"title": "red shirt"})
    client.search(index="products", body={"query": {"match": {"title": "shirt"}}}, params={"size": 3})
    client.bulk(body=[{"index": {"_index": "products", "_id": "1"}}, {"title": "ü"}])

    assert len(_Recorder.seen) == 4
    for method, path, headers, body in _Recorder.seen:
        lowered = {k.lower(): v for k, v in headers.items()}
        assert lowered["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest(), (method, path)
        assert lowered["x-amz-security-token"] == KEYS.token
        authorization = lowered["authorization"]
        assert authorization.startswith(f"AWS4-HMAC-SHA256 Credential={KEYS.access_key}/")
        assert "/eu-west-1/aoss/aws4_request, " in authorization
        signed = authorization.split("SignedHeaders=", 1)[1].split(",", 1)[0].split(";")
        assert {"host", "x-amz-content-sha256", "x-amz-date", "x-amz-security-token"} <= set(signed)
        # Recompute from what arrived, over the headers the client said it signed: a header changed
        # after signing (or a body other than the one hashed) would not match.
        now = datetime.strptime(lowered["x-amz-date"], "%Y%m%dT%H%M%SZ")
        received = {name: lowered[name] for name in signed}
        canonical, _ = canonical_request(method, f"{endpoint}{path}", received, hashlib.sha256(body).hexdigest())
        expected = sign_headers(method, f"{endpoint}{path}", received, body, KEYS, "eu-west-1", "aoss", now=now)
        assert expected["Authorization"] == authorization, canonical


def test_aws_without_any_credentials_names_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    settings = Settings(opensearch_hosts=["https://example.com:443"], opensearch_aws_region="us-east-1")

    with pytest.raises(ConfigError, match="AWS_ACCESS_KEY_ID"):
        create_client(settings)
