"""The doctor's pure parts: reading the plugin's 403, per-item refusals, the probes' verdicts, the model id;
and the API's certificate reloader on real certificate files with a stand-in searcher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from opensearchpy import ConnectionTimeout, TransportError

from mm_opensearch.api.certs import CertificateReloader
from mm_opensearch.config import Settings
from mm_opensearch.devservices.security import generate_ca, issue_cert
from mm_opensearch.doctor import CheckResult, _item_error, _Probe, _run_probe, configured_model, failed, missing_permission

_REFUSAL = {"error": {"type": "security_exception", "reason": "no permissions for [indices:data/write/bulk[s]] and "
                      "User [name=reader, backend_roles=[], requestedTenant=null]"}, "status": 403}


def test_missing_permission_reads_the_action_from_the_plugin_s_reason() -> None:
    assert missing_permission(TransportError(403, "security_exception", _REFUSAL)) == "indices:data/write/bulk[s]"
    assert missing_permission(TransportError(403, "security_exception", {"error": "forbidden"})) is None


def test_per_item_refusals_raise_and_a_409_on_create_does_not() -> None:
    _item_error({"items": [{"create": {"status": 409, "error": {"type": "version_conflict_engine_exception"}}}]},
                "items")
    _item_error({"docs": [{"_id": "x", "found": False}]}, "docs")
    with pytest.raises(TransportError) as refused:
        _item_error({"responses": [{"error": _REFUSAL["error"], "status": 403}]}, "responses")
    assert refused.value.status_code == 403
    with pytest.raises(TransportError):  # a create that did write is not harmless: never counted as permitted
        _item_error({"items": [{"create": {"status": 400, "error": {"type": "mapper_parsing_exception"}}}]}, "items")


def _raising(error: Exception) -> Any:
    def call(_: Any) -> None:
        raise error
    return call


def test_probe_verdicts() -> None:
    ok = _Probe("indices:data/read/search", lambda _: None)
    assert _run_probe(None, ok) is None  # type: ignore[arg-type]
    refused = _Probe("indices:data/write/bulk", _raising(TransportError(403, "security_exception", _REFUSAL)))
    assert _run_probe(None, refused) == "indices:data/write/bulk[s]"  # type: ignore[arg-type]
    exists = _Probe("indices:admin/create", _raising(TransportError(400, "resource_already_exists_exception", {})),
                    allowed_statuses=(400,))
    assert _run_probe(None, exists) is None  # type: ignore[arg-type]
    silent = _Probe("cluster:monitor/health", _raising(ConnectionTimeout("TIMEOUT", "timed out", None)))
    verdict = _run_probe(None, silent)  # type: ignore[arg-type]
    assert verdict is not None and "no answer" in verdict and "MMOS_CONNECT_TIMEOUT_S" in verdict


def test_failed_counts_failures_not_warnings() -> None:
    assert not failed([CheckResult("workers", "warn", "none"), CheckResult("redis", "ok", "")])
    assert failed([CheckResult("index", "fail", "gone", "create it")])


def test_configured_model_reads_config_json_or_the_default(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_id": "mmos-abc", "dim": 24}))
    assert configured_model(tmp_path, lambda: Path("/nowhere")) == ("mmos-abc", 24)
    assert configured_model(None, lambda: tmp_path) == ("mmos-abc", 24)


class _Searcher:
    def __init__(self) -> None:
        self.client = _Client("first")

    def replace_client(self, client: Any) -> Any:
        previous, self.client = self.client, client
        return previous


class _Client:
    def __init__(self, name: str) -> None:
        self.name, self.closed = name, False

    def close(self) -> None:
        self.closed = True


def _pem(cert: Any) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def test_the_reloader_swaps_only_a_complete_set_and_closes_the_old_client_later(tmp_path: Path) -> None:
    ca, ca_key = generate_ca("unit CA")
    cert_a, key_a = issue_cert(ca, ca_key, "a", server=False)
    cert_b, key_b = issue_cert(ca, ca_key, "b", server=False)
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "c.pem", "key": tmp_path / "k.pem"}
    files["ca"].write_bytes(_pem(ca))
    files["cert"].write_bytes(_pem(cert_a))
    files["key"].write_bytes(_key_pem(key_a))
    settings = Settings(opensearch_ca_certs=files["ca"], opensearch_client_cert=files["cert"],
                        opensearch_client_key=files["key"])
    searcher, built = _Searcher(), []
    reloader = CertificateReloader(settings, searcher, lambda s: built.append(_Client(f"n{len(built)}")) or built[-1])  # type: ignore[arg-type]
    first = searcher.client
    assert reloader.check() is False  # nothing changed

    files["cert"].write_bytes(_pem(cert_b))  # B's certificate with A's key: not a set
    assert reloader.check() is False and built == [] and searcher.client is first

    files["key"].write_bytes(_key_pem(key_b))
    assert reloader.check() is True and searcher.client is built[0] and not first.closed  # running calls finish
    assert reloader.check() is False

    files["ca"].write_bytes(_pem(ca) + _pem(generate_ca("second CA")[0]))  # a bundle: old and new CA
    assert reloader.check() is True and searcher.client is built[1] and first.closed
    reloader.close()
    assert built[0].closed and not built[1].closed
