"""The least-privilege roles as data, the REST calls dev up makes from them, and the 403 message."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from mm_opensearch.cli.app import _transport_error
from mm_opensearch.devservices import security
from mm_opensearch.devservices.security import ensure_role_users, ensure_security_files
from mm_opensearch.errors import DevServiceError, permission_denied
from mm_opensearch.security_roles import ADMIN_ROLE, ROLES, SEARCH_ROLE, WORKER_ROLE, index_patterns, role_body

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"
_REFUSED = {
    "security_exception": "no permissions for [indices:data/read/search] and User [name=mmos_nobody, backend_roles=[], "
    "requestedTenant=null]"
}


def test_the_search_role_administers_nothing_and_writes_nothing() -> None:
    search = ROLES[SEARCH_ROLE]
    actions = search.cluster_actions + search.index_actions
    assert not [a for a in actions if "pipeline" in a or "/write" in a or a.startswith(("indices:admin/create",
                                                                                        "indices:admin/aliases"))
                and a != "indices:admin/aliases/get"]
    assert "cluster:monitor/state" not in actions  # _cat/plugins: provisioning's, not the search path's


def test_the_worker_writes_documents_but_creates_no_index_alias_or_pipeline() -> None:
    worker = ROLES[WORKER_ROLE]
    assert "indices:data/write/bulk" in worker.cluster_actions and "indices:data/write/bulk*" in worker.index_actions
    assert not [a for a in worker.cluster_actions + worker.index_actions
                if "pipeline" in a or a in {"indices:admin/create", "indices:admin/aliases", "indices:admin/delete"}]


def test_the_admin_has_every_worker_and_search_permission() -> None:
    admin = ROLES[ADMIN_ROLE]
    for other in (ROLES[SEARCH_ROLE], ROLES[WORKER_ROLE]):
        assert set(other.cluster_actions) <= set(admin.cluster_actions)
        assert set(other.index_actions) <= set(admin.index_actions)


def test_every_permission_says_why_and_the_docs_list_each_one() -> None:
    docs = DOCS.read_text()
    for role in ROLES.values():
        assert f"`{role.name}`" in docs
        for permission in (*role.cluster, *role.index):
            assert permission.why.strip(), permission
            assert f"`{permission.action}`" in docs, permission.action


def test_a_role_body_covers_the_alias_and_its_versions() -> None:
    body = role_body(ROLES[SEARCH_ROLE], "products")
    assert body["index_permissions"] == [
        {"index_patterns": ["products", "products_v*"], "allowed_actions": ROLES[SEARCH_ROLE].index_actions}
    ]
    assert index_patterns("mmsec") == ["mmsec", "mmsec_v*"]


def test_each_role_user_gets_a_private_password_and_a_certificate_named_after_it(tmp_path: Path) -> None:
    files = ensure_security_files(tmp_path / "config")
    for user in ROLES:
        assert stat.S_IMODE(files.user_password_file(user).stat().st_mode) == 0o600
        assert len(files.user_password(user)) >= 20
        cn = x509.load_pem_x509_certificate(files.user_cert(user).read_bytes()).subject.rfc4514_string()
        assert cn.startswith(f"CN={user},")
    before = {user: files.user_password(user) for user in ROLES}
    ensure_security_files(tmp_path / "config")  # a restart keeps them
    assert {user: files.user_password(user) for user in ROLES} == before


def _recording(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int = 200) -> list[tuple[str, str, Any]]:
    seen: list[tuple[str, str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, json.loads(request.content)))
        return httpx.Response(status, json={"status": "OK"})

    real = httpx.Client

    def client(**kwargs: Any) -> httpx.Client:
        kwargs.pop("verify", None)
        return real(transport=httpx.MockTransport(answer), **kwargs)

    monkeypatch.setattr(security.httpx, "Client", client)
    return seen


def test_dev_up_patches_roles_users_and_mappings_once_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = ensure_security_files(tmp_path / "config")
    seen = _recording(tmp_path, monkeypatch)
    assert ensure_role_users(files, "https://127.0.0.1:9200", "products") == list(ROLES)
    assert [(m, p) for m, p, _ in seen] == [("PATCH", f"/_plugins/_security/api/{kind}")
                                            for kind in ("roles", "internalusers", "rolesmapping")]
    roles, users, mappings = (body for _, _, body in seen)
    assert {op["path"]: op["value"] for op in roles} == {f"/{n}": role_body(r, "products") for n, r in ROLES.items()}
    assert {op["path"]: op["value"]["password"] for op in users} == {f"/{n}": files.user_password(n) for n in ROLES}
    assert {op["path"]: op["value"] for op in mappings} == {f"/{n}": {"users": [n]} for n in ROLES}


def test_a_refused_role_update_is_a_dev_service_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = ensure_security_files(tmp_path / "config")
    _recording(tmp_path, monkeypatch, status=403)
    with pytest.raises(DevServiceError, match="refused `PATCH _plugins/_security/api/roles` \\(403"):
        ensure_role_users(files, "https://127.0.0.1:9200", "products")


def test_a_403_names_the_user_and_the_missing_privilege() -> None:
    body = {"error": {"type": "security_exception", "reason": _REFUSED["security_exception"]}, "status": 403}
    error = permission_denied(body, "search index 'products'")
    assert error.privilege == "indices:data/read/search"
    assert re.fullmatch(r"OpenSearch user 'mmos_nobody' lacks the privilege indices:data/read/search needed to "
                        r"search index 'products' \(403\); .*docs/security.md\)", str(error)), str(error)


def test_a_403_without_the_plugin_wording_still_says_what_was_refused() -> None:
    error = permission_denied({"error": "forbidden by a proxy"}, "search index 'products'")
    assert error.privilege is None
    assert "refused to search index 'products' (403: forbidden by a proxy)" in str(error)


def test_the_cli_prints_the_missing_privilege_of_a_403() -> None:
    from opensearchpy import AuthorizationException  # noqa: PLC0415

    body = {"error": {"type": "security_exception", "reason": _REFUSED["security_exception"]}, "status": 403}
    line = _transport_error(AuthorizationException(403, "security_exception", body))
    assert "user 'mmos_nobody' lacks the privilege indices:data/read/search" in line, line
