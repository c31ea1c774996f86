"""The secured dev node's files (certificates, plugin settings, users) and its classpath, without a node."""

from __future__ import annotations

import stat
from pathlib import Path

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509.oid import ExtendedKeyUsageOID

from mm_opensearch.config import Settings
from mm_opensearch.devservices.opensearch import OpenSearchNode, drop_older_duplicate_jars
from mm_opensearch.devservices.security import ensure_security_files
from mm_opensearch.errors import DevServiceError


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_every_certificate_is_signed_by_the_dev_ca_and_the_node_is_127_0_0_1(tmp_path: Path) -> None:
    files = ensure_security_files(tmp_path / "config")
    ca = _cert(files.ca_cert)
    for leaf in (files.node_cert, files.admin_cert, files.client_cert):
        cert = _cert(leaf)
        ca.public_key().verify(  # type: ignore[call-arg]
            cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm,
        )
    node = _cert(files.node_cert)
    names = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    usages = node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)  # transport: both ends
    assert files.node_key.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8, what the plugin reads


def test_settings_name_the_admin_and_node_dns_and_the_hash_matches_the_password(tmp_path: Path) -> None:
    files = ensure_security_files(tmp_path / "config")
    text = files.settings_file.read_text()
    assert 'plugins.security.authcz.admin_dn: ["CN=admin,O=mm-opensearch dev"]' in text
    assert 'plugins.security.nodes_dn: ["CN=node,O=mm-opensearch dev"]' in text
    assert "plugins.security.ssl.http.clientauth_mode: OPTIONAL" in text
    users = (files.security_dir / "internal_users.yml").read_text()
    hashed = users.split('hash: "')[1].split('"')[0]
    assert bcrypt.checkpw(files.admin_password().encode(), hashed.encode())
    assert files.admin_password() not in users
    for secret in (files.password_file, files.ca_key, files.node_key, files.security_dir / "internal_users.yml"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret


def test_a_second_start_keeps_the_ca_the_certificates_and_the_password(tmp_path: Path) -> None:
    first = ensure_security_files(tmp_path / "config")
    before = (first.ca_cert.read_bytes(), first.client_cert.read_bytes(), first.admin_password())
    again = ensure_security_files(tmp_path / "config")
    assert (again.ca_cert.read_bytes(), again.client_cert.read_bytes(), again.admin_password()) == before


def test_the_older_copy_of_a_library_two_zips_bring_is_dropped(tmp_path: Path) -> None:
    for name in ("guava-32.1.3-jre.jar", "guava-33.4.0-jre.jar", "asm-9.7.jar", "asm-9.7.1.jar",
                 "netty-codec-4.1.118.Final.jar", "netty-codec-http-4.1.118.Final.jar", "opensearch-2.19.1.jar"):
        (tmp_path / name).write_bytes(b"")
    assert sorted(drop_older_duplicate_jars(tmp_path)) == ["asm-9.7.jar", "guava-32.1.3-jre.jar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "asm-9.7.1.jar", "guava-33.4.0-jre.jar", "netty-codec-4.1.118.Final.jar",
        "netty-codec-http-4.1.118.Final.jar", "opensearch-2.19.1.jar",
    ]


def test_a_secured_node_has_its_own_jars_and_https(tmp_path: Path) -> None:
    plain = OpenSearchNode(Settings(dev_dir=tmp_path, cache_dir=tmp_path / "cache"))
    secured = OpenSearchNode(Settings(dev_dir=tmp_path, cache_dir=tmp_path / "cache", dev_opensearch_secure=True))
    assert plain.url.startswith("http://") and secured.url.startswith("https://")
    assert secured.jars != plain.jars and secured.jars.name.endswith("-secure")
    assert secured.client_environment()["MMOS_OPENSEARCH_CA_CERTS"] == str(secured.security.ca_cert)


def test_a_secured_home_is_not_opened_unsecured(tmp_path: Path) -> None:
    OpenSearchNode(Settings(dev_dir=tmp_path, dev_opensearch_secure=True))._prepare_security()
    plain = OpenSearchNode(Settings(dev_dir=tmp_path, dev_opensearch_secure=False))
    assert plain.secure  # status and health use TLS for a home started secured
    with pytest.raises(DevServiceError, match=r"dev up --secure.*MMOS_DEV_OPENSEARCH_SECURE"):
        plain._prepare_security()
