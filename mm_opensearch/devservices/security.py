"""Certificates and security-plugin configuration for a secured dev node (``dev up --secure``).

A throwaway CA signs the node's certificate (TLS on HTTP and transport), an admin certificate
(``plugins.security.authcz.admin_dn``, what securityadmin-style tools use) and a client certificate
whose CN is the user name (client-certificate authentication beside basic auth). Everything is
generated once into ``HOME/config`` (the security plugin resolves its files against ``path.conf``)
and kept across restarts, so a CA file handed to clients stays valid. The admin password is random,
stored bcrypt-hashed in ``internal_users.yml`` and in clear in a 0600 file for the developer.

Once the node answers, :func:`ensure_role_users` creates the least-privilege roles of
:mod:`mm_opensearch.security_roles` through the security REST API, with one user per role (the
role's name; a random password in a 0600 ``<user>-password`` file beside the admin's, and a client
certificate whose CN is the user). The REST API, not the YAML, because the YAML is read only when
the security index is first created, and a home started before the roles existed must get them too.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mm_opensearch.errors import DevServiceError
from mm_opensearch.security_roles import ROLES, role_body

__all__ = [
    "ADMIN_USER", "CLIENT_USER", "ROLE_USERS", "SecurityFiles", "ensure_role_users", "ensure_security_files",
    "generate_ca", "issue_cert",
]

ADMIN_USER = "admin"  # basic-auth user with all_access
CLIENT_USER = "mmos-client"  # CN of the client certificate; mapped to all_access until item 2's roles exist
_ORG = "mm-opensearch dev"
_VALID_DAYS = 825  # the longest validity clients such as macOS still accept for a server certificate
SECURITY_DIR = "opensearch-security"  # under path.conf: where the plugin reads its YAML on first start
ROLE_USERS = tuple(ROLES)  # one user per least-privilege role, named as the role


@dataclass(frozen=True)
class SecurityFiles:
    """Where the secured node's certificates, keys and credentials live (all under ``config``)."""

    config: Path

    @property
    def ca_cert(self) -> Path:
        return self.config / "root-ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.config / "root-ca-key.pem"

    @property
    def node_cert(self) -> Path:
        return self.config / "node.pem"

    @property
    def node_key(self) -> Path:
        return self.config / "node-key.pem"

    @property
    def admin_cert(self) -> Path:
        return self.config / "admin.pem"

    @property
    def admin_key(self) -> Path:
        return self.config / "admin-key.pem"

    @property
    def client_cert(self) -> Path:
        return self.config / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.config / "client-key.pem"

    @property
    def password_file(self) -> Path:
        return self.config / "admin-password"

    @property
    def security_dir(self) -> Path:
        return self.config / SECURITY_DIR

    @property
    def settings_file(self) -> Path:
        return self.config / "opensearch.yml"

    def admin_password(self) -> str:
        return self.password_file.read_text().strip()

    def user_password_file(self, user: str) -> Path:
        """Where the password of role user ``user`` is kept (0600, beside the admin's)."""
        return self.config / f"{user}-password"

    def user_password(self, user: str) -> str:
        return self.user_password_file(user).read_text().strip()

    def user_cert(self, user: str) -> Path:
        """The client certificate of role user ``user`` (its CN is the user name)."""
        return self.config / f"{user}.pem"

    def user_key(self, user: str) -> Path:
        return self.config / f"{user}-key.pem"


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    """PKCS#8 unencrypted, which is the form the plugin's PEM reader takes; only the owner may read it."""
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(data)
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def generate_ca(common_name: str = f"{_ORG} CA") -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A self-signed CA certificate and its key."""
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue_cert(
    ca_cert: x509.Certificate, ca_key: rsa.RSAPrivateKey, common_name: str, *, server: bool
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A leaf certificate signed by the CA; ``server`` adds serverAuth and localhost/127.0.0.1 names.

    The node's certificate carries both serverAuth and clientAuth: on the transport layer a node is
    the client of the other (here: of itself).
    """
    key = _key()
    now = dt.datetime.now(dt.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=True, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _dn(cert_path: Path) -> str:
    """The subject as the plugin compares it (RFC 4514, most specific first: ``CN=...,O=...``)."""
    return x509.load_pem_x509_certificate(cert_path.read_bytes()).subject.rfc4514_string()


def _certificates(files: SecurityFiles) -> None:
    """Create the CA and the leaf certificates that are missing; an existing CA is reused."""
    if files.ca_cert.exists() and files.ca_key.exists():
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        loaded = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
        assert isinstance(loaded, rsa.RSAPrivateKey)  # noqa: S101 - we wrote it
        ca_key = loaded
    else:
        ca_cert, ca_key = generate_ca()
        _write_key(files.ca_key, ca_key)
        _write_cert(files.ca_cert, ca_cert)
    for cert_path, key_path, cn, server in (
        (files.node_cert, files.node_key, "node", True),
        (files.admin_cert, files.admin_key, "admin", False),
        (files.client_cert, files.client_key, CLIENT_USER, False),
        *((files.user_cert(user), files.user_key(user), user, False) for user in ROLE_USERS),
    ):
        if not (cert_path.exists() and key_path.exists()):
            cert, key = issue_cert(ca_cert, ca_key, cn, server=server)
            _write_key(key_path, key)
            _write_cert(cert_path, cert)


def _yaml_list(values: list[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def _node_settings(files: SecurityFiles) -> str:
    """``opensearch.yml`` for the plugin; paths are relative to path.conf, as the plugin requires."""
    lines = [
        "# written by mm-opensearch dev up --secure; regenerated on every secured start",
        "plugins.security.ssl.transport.pemcert_filepath: node.pem",
        "plugins.security.ssl.transport.pemkey_filepath: node-key.pem",
        "plugins.security.ssl.transport.pemtrustedcas_filepath: root-ca.pem",
        "plugins.security.ssl.transport.enforce_hostname_verification: false",
        "plugins.security.ssl.http.enabled: true",
        "plugins.security.ssl.http.pemcert_filepath: node.pem",
        "plugins.security.ssl.http.pemkey_filepath: node-key.pem",
        "plugins.security.ssl.http.pemtrustedcas_filepath: root-ca.pem",
        "plugins.security.ssl.http.clientauth_mode: OPTIONAL",  # a client certificate may be offered
        "plugins.security.allow_default_init_securityindex: true",  # load opensearch-security/*.yml once
        f"plugins.security.authcz.admin_dn: {_yaml_list([_dn(files.admin_cert)])}",
        f"plugins.security.nodes_dn: {_yaml_list([_dn(files.node_cert)])}",
        'plugins.security.restapi.roles_enabled: ["all_access"]',
        "plugins.security.system_indices.enabled: true",
        "plugins.security.audit.type: noop",
        "plugins.security.check_snapshot_restore_write_privileges: true",
        "",
    ]
    return "\n".join(lines)


_CONFIG_YML = """\
_meta: {type: config, config_version: 2}
config:
  dynamic:
    http:
      anonymous_auth_enabled: false
    authc:
      clientcert_auth_domain:
        description: "a client certificate signed by the dev CA; its CN is the user name"
        http_enabled: true
        transport_enabled: false
        order: 0
        http_authenticator: {type: clientcert, challenge: false, config: {username_attribute: cn}}
        authentication_backend: {type: noop}
      basic_internal_auth_domain:
        description: "basic auth against internal_users.yml"
        http_enabled: true
        transport_enabled: true
        order: 1
        http_authenticator: {type: basic, challenge: false}
        authentication_backend: {type: intern}
"""


def _security_yaml(password_hash: str) -> dict[str, str]:
    """The plugin's configuration files; without any of them its first start does not initialize."""
    return {
        "config.yml": _CONFIG_YML,
        "internal_users.yml": (
            "_meta: {type: internalusers, config_version: 2}\n"
            f"{ADMIN_USER}:\n  hash: \"{password_hash}\"\n  reserved: true\n  backend_roles: [\"admin\"]\n"
            "  description: \"mm-opensearch dev admin; password in the dev dir's admin-password file\"\n"
        ),
        "roles.yml": "_meta: {type: roles, config_version: 2}\n",
        "roles_mapping.yml": (
            "_meta: {type: rolesmapping, config_version: 2}\n"
            f"all_access:\n  reserved: false\n  backend_roles: [\"admin\"]\n  users: [\"{CLIENT_USER}\"]\n"
        ),
        "action_groups.yml": "_meta: {type: actiongroups, config_version: 2}\n",
        "tenants.yml": "_meta: {type: tenants, config_version: 2}\n",
        "nodes_dn.yml": "_meta: {type: nodesdn, config_version: 2}\n",
        "allowlist.yml": "_meta: {type: allowlist, config_version: 2}\nconfig: {enabled: false}\n",
        "whitelist.yml": "_meta: {type: whitelist, config_version: 2}\nconfig: {enabled: false}\n",
        "audit.yml": "_meta: {type: audit, config_version: 2}\nconfig: {enabled: false}\n",
    }


def ensure_security_files(config: Path) -> SecurityFiles:
    """Write what a secured node needs into ``config`` (its path.conf); existing certificates and the
    admin password are kept, so clients configured once keep working across restarts."""
    files = SecurityFiles(config)
    config.mkdir(parents=True, exist_ok=True)
    _certificates(files)
    for password_file in (files.password_file, *(files.user_password_file(user) for user in ROLE_USERS)):
        _new_password(password_file)
    files.settings_file.write_text(_node_settings(files))
    files.security_dir.mkdir(exist_ok=True)
    hashed = bcrypt.hashpw(files.admin_password().encode(), bcrypt.gensalt(rounds=12)).decode()
    for name, text in _security_yaml(hashed).items():
        (files.security_dir / name).write_text(text)
    _owner_only(config)
    return files


def _new_password(path: Path) -> None:
    """A random password in a file only the owner can read; an existing one is kept."""
    if path.exists():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(18) + "\n")


def _patch(http: httpx.Client, kind: str, entries: dict[str, dict[str, Any]]) -> None:
    """One ``PATCH _plugins/_security/api/<kind>`` adding (or replacing) every entry: one reload of the
    plugin's configuration per kind instead of one per entry (each took seconds on a busy machine)."""
    operations = [{"op": "add", "path": f"/{name}", "value": value} for name, value in entries.items()]
    response = http.patch(f"/_plugins/_security/api/{kind}", json=operations)
    if response.status_code not in {200, 201}:
        msg = (
            f"the secured dev node refused `PATCH _plugins/_security/api/{kind}` ({response.status_code}: "
            f"{response.text[:300]}); delete the dev dir and run `mm-opensearch dev up --secure` again"
        )
        raise DevServiceError(msg)


def ensure_role_users(files: SecurityFiles, url: str, index: str, *, timeout_s: float = 60.0) -> list[str]:
    """Create (or update) each role of :data:`~mm_opensearch.security_roles.ROLES` on product index
    ``index``, a user of the same name with the password in its file, and the mapping of one to the
    other, as the admin through the security REST API. Returns the users.

    The mapping names the user, so both its password (basic auth) and its client certificate (the
    clientcert domain takes the CN as the user name) get the role.
    """
    trusted = ssl.create_default_context(cafile=str(files.ca_cert))
    auth = (ADMIN_USER, files.admin_password())
    with httpx.Client(base_url=url, verify=trusted, auth=auth, timeout=timeout_s) as http:
        _patch(http, "roles", {name: role_body(role, index) for name, role in ROLES.items()})
        _patch(http, "internalusers", {
            name: {
                "password": files.user_password(name),
                "description": f"mm-opensearch dev user of role {name}; password in {files.user_password_file(name)}",
            }
            for name in ROLES
        })
        _patch(http, "rolesmapping", {name: {"users": [name]} for name in ROLES})
    return list(ROLES)


def _owner_only(config: Path) -> None:
    """Keys, the password and the plugin's YAML readable by the owner only (the plugin warns otherwise)."""
    for path in (config, *config.rglob("*")):
        path.chmod(0o700 if path.is_dir() else 0o600)
