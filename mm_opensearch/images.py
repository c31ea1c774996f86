"""Load product images from local paths, ``file://`` and ``http(s)://`` URLs, safely.

Image URLs come from catalog feeds and API clients, so every URL is hostile input: it can aim the
fetcher at a cloud metadata service or an internal port (SSRF), or serve a file that exhausts
memory once decoded. Hence:

* only ``http`` and ``https`` are fetched. The host is resolved once, every address must be public
  (or inside ``image_fetch_allow_networks``), and the request goes to that validated address with
  the original ``Host`` header and TLS SNI, so a DNS answer that changes between the check and the
  connect (rebinding) is never used. Cloud metadata addresses are refused even when allow-listed;
* redirects are followed by hand, at most ``MAX_REDIRECTS``, and every hop is checked again;
* bytes, time and pixels are capped (``image_max_bytes``, ``image_fetch_timeout_s``,
  ``image_max_pixels``), and only ``ALLOWED_FORMATS`` are decoded: the format is sniffed from the
  leading bytes and Pillow is asked for that one parser only, so parsers with a poor security
  record (EPS via Ghostscript, TIFF, PSD, ...) never see the data;
* the result is RGB with the EXIF orientation applied; transparency is flattened onto white.

* local paths (and ``file://`` URLs) are read only when they resolve, symlinks and ``..``
  included, inside one of the *roots* the caller passes (``MMOS_IMAGE_ROOTS``, else the catalog
  file's folder or the workers' data dir): a catalog line is input too, and ``../../etc/shadow``
  must not become a vector or an error message;
* one deadline (``image_fetch_timeout_s``) covers a download from connect to last byte: a watchdog
  shuts the socket down when it passes, so a server dribbling one byte at a time cannot stretch
  httpx's per-read timeout;
* error texts name the source and the reason, never bytes of the file or of the server's answer
  (they end up in ``mm_embedding_error``, which ``/search`` returns, and in logs).

Every failure, whatever the value given (a NUL byte, ``http://[::1/x``, a number, a megabyte of
text), raises :class:`~mm_opensearch.errors.ImageLoadError` whose ``reason`` is one of
``not_found``, ``unreadable``, ``invalid_url``, ``path_not_allowed``, ``scheme_not_allowed``,
``address_not_allowed``, ``connection_failed``, ``timeout``, ``http_error``,
``too_many_redirects``, ``too_large``, ``format_not_allowed``, ``decompression_bomb`` or
``corrupt``, so the encoder can keep the product's text vector and report why its image is
missing, and one bad value never fails the other products of its batch.
"""

from __future__ import annotations

import io
import ipaddress
import os
import socket
import ssl
import stat
import threading
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit
from urllib.request import url2pathname

import certifi
import httpx
from PIL import Image, ImageOps

from mm_opensearch.config import Settings, get_settings
from mm_opensearch.errors import ConfigError, ImageLoadError, MMOpenSearchError

__all__ = [
    "ALLOWED_FORMATS",
    "MAX_REDIRECTS",
    "MAX_SOURCE_CHARS",
    "decode_image",
    "load_image",
    "read_image_bytes",
]

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
MAX_REDIRECTS = 3
MAX_SOURCE_CHARS = 8192  # longer than any real path or URL; a huge value is refused, not parsed
_LABEL_CHARS = 200  # how much of a source an error message quotes

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# AWS/GCP/Azure IMDS, AWS ECS task metadata, AWS IMDS over IPv6, Alibaba, Azure wire server, Oracle.
_METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",
        "169.254.170.2",
        "fd00:ec2::254",
        "100.100.100.200",
        "168.63.129.16",
        "192.0.0.192",
    )
)
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_WHITE = (255, 255, 255)


def load_image(
    source: str | os.PathLike[str], settings: Settings | None = None, *, roots: Sequence[Path] = ()
) -> Image.Image:
    """Read and decode one image into RGB; every failure is an ``ImageLoadError`` naming *source*.

    Local paths must resolve inside one of *roots* (none given: local paths are refused).
    """
    settings = settings or get_settings()
    data = read_image_bytes(source, settings, roots=roots)
    try:
        return decode_image(data, settings)
    except ImageLoadError as e:
        msg = f"image {_label(source)!r}: {e}"
        raise ImageLoadError(msg, reason=e.reason) from e


def read_image_bytes(
    source: object, settings: Settings | None = None, *, roots: Sequence[Path] = ()
) -> bytes:
    """The raw bytes of an image file or URL, within the byte and time limits and the *roots*.

    Kept apart from decoding so callers can key caches on the bytes' hash before paying for a decode.
    *source* is typed loosely on purpose: it comes from catalog documents, and whatever it is
    (a number, a NUL byte, an unparsable URL) the answer is an ``ImageLoadError``.
    """
    settings = settings or get_settings()
    text = _checked_source(source)
    try:
        return _read_source(source, text, settings, roots)
    except MMOpenSearchError:  # ImageLoadError, or a ConfigError about the settings themselves
        raise
    except Exception as e:  # noqa: BLE001 - a value no check above foresaw still fails only its product
        msg = f"image {_label(text)!r} is not a usable path or URL ({type(e).__name__}); check the value"
        raise ImageLoadError(msg, reason="invalid_url") from e


def _checked_source(source: object) -> str:
    """*source* as text, refused when it cannot be a path or URL at all."""
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        msg = f"image value of type {type(source).__name__} is not a path or URL; give a string"
        raise ImageLoadError(msg, reason="invalid_url")
    if len(source) > MAX_SOURCE_CHARS:
        msg = f"image value of {len(source)} characters is over {MAX_SOURCE_CHARS}; give a path or URL"
        raise ImageLoadError(msg, reason="invalid_url")
    if any(ord(char) < 32 or ord(char) == 127 for char in source):
        msg = f"image {_label(source)!r} contains a control character (NUL, newline...); fix the value"
        raise ImageLoadError(msg, reason="invalid_url")
    return source


def _read_source(source: object, text: str, settings: Settings, roots: Sequence[Path]) -> bytes:
    if isinstance(source, os.PathLike):
        return _read_local(Path(text), roots, settings)
    try:
        parts = urlsplit(text)
    except ValueError as e:  # e.g. "http://[::1/x": an unclosed IPv6 bracket
        msg = f"image {_label(text)!r}: invalid URL; check the value"
        raise ImageLoadError(msg, reason="invalid_url") from e
    if parts.scheme in ("http", "https"):
        return _fetch_http(text, settings)
    if parts.scheme == "file":
        return _read_local(_file_url_path(parts, text), roots, settings)
    if not parts.scheme:
        return _read_local(Path(text), roots, settings)
    msg = (
        f"image {_label(text)!r}: scheme {parts.scheme[:20]!r} is not allowed; "
        "give a local path, a file:// URL or an http(s):// URL"
    )
    raise ImageLoadError(msg, reason="scheme_not_allowed")


def decode_image(data: bytes, settings: Settings | None = None) -> Image.Image:
    """Decode *data* (an allowed format, within ``image_max_pixels``) into an upright RGB image."""
    settings = settings or get_settings()
    image_format = _sniff_format(data)
    try:
        with Image.open(io.BytesIO(data), formats=[image_format]) as image:
            _check_pixels(image.size, settings)
            image.load()
            upright = ImageOps.exif_transpose(image)
            return _to_rgb(upright)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as e:
        msg = "image is larger than Pillow's pixel limit; refused as a possible decompression bomb"
        raise ImageLoadError(msg, reason="decompression_bomb") from e
    except Exception as e:  # Pillow raises OSError, SyntaxError, struct.error, EOFError... on bad bytes
        # Pillow's message is left out: it can quote values read from the file itself.
        msg = f"{image_format} data is truncated or corrupt ({type(e).__name__}); re-export the image"
        raise ImageLoadError(msg, reason="corrupt") from e


# --- local files ------------------------------------------------------------------------------


def _file_url_path(parts: SplitResult, source: str) -> Path:
    if parts.netloc not in ("", "localhost"):
        msg = f"image {_label(source)!r}: a file:// URL must name a local file (file:///path), not {parts.netloc[:_LABEL_CHARS]!r}"
        raise ImageLoadError(msg, reason="invalid_url")
    return Path(url2pathname(parts.path))


def _read_local(path: Path, roots: Sequence[Path], settings: Settings) -> bytes:
    """The bytes of *path* once it resolves inside *roots*; nothing is opened outside them.

    The path is resolved first (``..`` and every symlink), the check is made on the result, and
    that resolved path is opened with ``O_NOFOLLOW``, so a link swapped in afterwards is refused
    rather than followed. Whether a file exists outside the roots is never told.
    """
    label = _label(str(path))
    resolved = Path(os.path.realpath(path))
    allowed = [Path(os.path.realpath(root)) for root in roots]
    if not any(resolved.is_relative_to(root) for root in allowed):
        raise _outside_roots(label, resolved, allowed)
    limit = settings.image_max_bytes
    # O_NONBLOCK: opening a FIFO must not hang the worker; regular files ignore it.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(resolved, flags)
    except FileNotFoundError as e:
        msg = f"image {label!r} does not exist; check the path (relative paths start at {os.getcwd()!r})"
        raise ImageLoadError(msg, reason="not_found") from e
    except OSError as e:
        msg = f"image {label!r} cannot be opened ({e.strerror}); check its permissions"
        raise ImageLoadError(msg, reason="unreadable") from e
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            msg = f"image {label!r} is not a regular file; give the path of an image file"
            raise ImageLoadError(msg, reason="unreadable")
        if info.st_size > limit:
            raise _too_large(label, f"is {info.st_size} bytes", settings)
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(limit + 1)
    except OSError as e:
        msg = f"image {label!r} cannot be read ({e.strerror}); check its permissions"
        raise ImageLoadError(msg, reason="unreadable") from e
    finally:
        os.close(fd)
    if len(data) > limit:  # the file grew after fstat()
        raise _too_large(label, "grew while being read", settings)
    return data


def _outside_roots(label: str, resolved: Path, roots: list[Path]) -> ImageLoadError:
    if not roots:
        msg = (
            f"image {label!r}: local image paths are refused because no image roots were given; "
            "set MMOS_IMAGE_ROOTS to the folders that hold the images (comma-separated)"
        )
    else:
        listed = ", ".join(str(root) for root in roots)
        msg = (
            f"image {label!r} resolves to {str(resolved)[:_LABEL_CHARS]!r}, outside the image roots ({listed}); "
            "move the image under one of them or add its folder to MMOS_IMAGE_ROOTS (comma-separated)"
        )
    return ImageLoadError(msg, reason="path_not_allowed")


# --- http(s) ------------------------------------------------------------------------------------


def _fetch_http(source: str, settings: Settings) -> bytes:
    allowed = _allowed_networks(settings)
    deadline = time.monotonic() + settings.image_fetch_timeout_s
    label = _label(source)
    try:
        url = httpx.URL(source)
        for _hop in range(MAX_REDIRECTS + 1):
            addresses = _validated_addresses(url, allowed, label)
            location, body = _get_from_any(url, addresses, deadline, label, settings)
            if location is None:
                return body
            url = url.join(location)
            if url.scheme not in ("http", "https"):
                # Only the scheme is named: the Location header is the server's text, not ours.
                msg = f"image {label!r} redirects to a {url.scheme[:20]!r} URL; only http(s) redirects are followed"
                raise ImageLoadError(msg, reason="scheme_not_allowed")
    except httpx.TimeoutException as e:
        raise _timeout(label, settings) from e
    except httpx.InvalidURL as e:
        msg = f"image {label!r}: invalid URL; check the value"
        raise ImageLoadError(msg, reason="invalid_url") from e
    except httpx.HTTPError as e:
        # Only a connect error's text is kept (the OS's words, e.g. "Connection refused"): a
        # protocol error's text quotes the malformed bytes the server sent.
        detail = f"{type(e).__name__}: {e}" if isinstance(e, httpx.ConnectError) else type(e).__name__
        msg = f"image {label!r}: connection failed ({detail}); check that the server is up"
        raise ImageLoadError(msg, reason="connection_failed") from e
    msg = f"image {label!r}: more than {MAX_REDIRECTS} redirects (a loop?); link the final URL directly"
    raise ImageLoadError(msg, reason="too_many_redirects")


def _allowed_networks(settings: Settings) -> list[_IPNetwork]:
    try:
        return [ipaddress.ip_network(cidr, strict=False) for cidr in settings.image_fetch_allow_networks]
    except ValueError as e:
        msg = (
            f"image_fetch_allow_networks: {e}; give CIDRs, e.g. "
            "MMOS_IMAGE_FETCH_ALLOW_NETWORKS=127.0.0.0/8,10.20.0.0/16"
        )
        raise ConfigError(msg) from e


def _validated_addresses(url: httpx.URL, allowed: list[_IPNetwork], label: str) -> list[_IPAddress]:
    """Resolve *url*'s host; refuse unless every address may be reached (one bad answer is enough)."""
    host = url.raw_host.decode("ascii")
    if not host:
        msg = f"image {label!r}: URL {_label(str(url))!r} has no host"
        raise ImageLoadError(msg, reason="invalid_url")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        msg = f"image {label!r}: host {host[:_LABEL_CHARS]!r} does not resolve ({e}); check the URL"
        raise ImageLoadError(msg, reason="not_found") from e
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    for address in addresses:
        why = _refusal(address, allowed)
        if why is not None:
            msg = f"image {label!r}: host {host!r} resolves to {address}, {why}"
            raise ImageLoadError(msg, reason="address_not_allowed")
    return addresses


def _refusal(address: _IPAddress, allowed: list[_IPNetwork]) -> str | None:
    """Why *address* may not be fetched from, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # the kernel connects to the IPv4 address itself
    if address in _METADATA_ADDRESSES:
        return "a cloud metadata address, which is never fetched"
    if any(address in network for network in allowed):
        return None
    kinds = [
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("private", address.is_private),
        ("reserved", address.is_reserved or not address.is_global),
    ]
    for kind, applies in kinds:
        if applies:
            return (
                f"a {kind} address; only public addresses are fetched "
                "(a trusted network can be listed in MMOS_IMAGE_FETCH_ALLOW_NETWORKS)"
            )
    if isinstance(address, ipaddress.IPv6Address) and address.sixtofour is not None:
        embedded = _refusal(address.sixtofour, allowed)
        return None if embedded is None else f"a 6to4 address embedding {address.sixtofour}, {embedded}"
    return None


def _get_from_any(
    url: httpx.URL, addresses: list[_IPAddress], deadline: float, label: str, settings: Settings
) -> tuple[str | None, bytes]:
    """Try the validated addresses in order, moving on only when one refuses the connection."""
    for address in addresses[:-1]:
        try:
            return _get_pinned(url, address, deadline, label, settings)
        except httpx.ConnectError:
            continue
    return _get_pinned(url, addresses[-1], deadline, label, settings)


def _get_pinned(
    url: httpx.URL, address: _IPAddress, deadline: float, label: str, settings: Settings
) -> tuple[str | None, bytes]:
    """GET *url* from *address*: ``(location, b"")`` for a redirect, ``(None, body)`` otherwise.

    A fresh client per request: a pooled TLS connection must never carry a request for a host its
    certificate was not checked against. httpx's timeout applies to each read alone, so the
    :class:`_Watchdog` enforces *deadline* on the request as a whole.
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _timeout(label, settings)
    host = url.raw_host.decode("ascii")
    headers = {"Host": url.netloc.decode("ascii"), "Accept": "image/*", "User-Agent": "mm-opensearch"}
    pinned = url.copy_with(host=str(address))
    with _Watchdog(deadline) as watchdog:
        extensions: dict[str, Any] = {"trace": watchdog.trace}
        if url.scheme == "https":
            extensions["sni_hostname"] = host
        try:
            location, body = _get(pinned, headers, extensions, remaining, label, deadline, settings)
        except httpx.HTTPError as e:
            if watchdog.expired:
                raise _timeout(label, settings) from e
            raise
        if watchdog.expired:  # a close-delimited body cut short by the watchdog reads as complete
            raise _timeout(label, settings)
        return location, body


def _get(
    url: httpx.URL,
    headers: dict[str, str],
    extensions: dict[str, Any],
    remaining: float,
    label: str,
    deadline: float,
    settings: Settings,
) -> tuple[str | None, bytes]:
    with (
        httpx.Client(trust_env=False, timeout=remaining, verify=_tls_context()) as client,
        client.stream("GET", url, headers=headers, extensions=extensions) as response,
    ):
        if response.status_code in _REDIRECT_STATUSES and "Location" in response.headers:
            return response.headers["Location"], b""
        if not response.is_success:
            # The status code only: the reason phrase is the server's text.
            msg = f"image {label!r}: server answered HTTP {response.status_code}"
            raise ImageLoadError(msg, reason="http_error")
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > settings.image_max_bytes:
            raise _too_large(label, f"declares {int(declared)} bytes", settings)
        body = bytearray()
        for chunk in response.iter_bytes():  # decompressed bytes: a gzip bomb is capped too
            body += chunk
            if len(body) > settings.image_max_bytes:
                raise _too_large(label, "sent more", settings)
            if time.monotonic() > deadline:
                raise _timeout(label, settings)
        return None, bytes(body)


@lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every fetch: building one per client loaded the CA bundle on every
    fetch (docs/measurements.md, "Image fetches").

    Sharing the context is safe (it holds trust roots, not connections); connections are not shared.
    """
    return ssl.create_default_context(cafile=certifi.where())


class _Watchdog:
    """Shuts a request's connection down when its deadline passes, whatever phase it is in.

    httpcore reports the TCP stream it connected through the ``trace`` extension; the watchdog
    keeps a duplicate of that socket's descriptor (a TLS wrap detaches the original object, a dup
    stays valid) and ``shutdown()`` on it wakes a blocked ``recv`` at once, which ``close()`` would
    not. The request then fails or ends, and the caller sees ``expired``.
    """

    def __init__(self, deadline: float) -> None:
        self.expired = False
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._timer.cancel()
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event != "connection.connect_tcp.complete":
            return
        sock = info["return_value"].get_extra_info("socket")
        if sock is None:
            return
        with self._lock:
            self._sock = sock.dup()
            if self.expired:  # the deadline passed while connecting
                self._shutdown()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            self._shutdown()

    def _shutdown(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the peer or by httpx


def _timeout(label: str, settings: Settings) -> ImageLoadError:
    msg = (
        f"image {label!r}: download took longer than image_fetch_timeout_s={settings.image_fetch_timeout_s}s "
        "(MMOS_IMAGE_FETCH_TIMEOUT_S); the server is slow or unreachable"
    )
    return ImageLoadError(msg, reason="timeout")


def _too_large(label: str, what: str, settings: Settings) -> ImageLoadError:
    msg = (
        f"image {label!r} {what}, over image_max_bytes={settings.image_max_bytes} "
        "(MMOS_IMAGE_MAX_BYTES); resize the image or raise the limit"
    )
    return ImageLoadError(msg, reason="too_large")


def _redact(source: str | os.PathLike[str]) -> str:
    """*source* without URL credentials, for messages and logs."""
    if isinstance(source, os.PathLike):
        return os.fspath(source)
    try:
        parts = urlsplit(source)
        if parts.username is None and parts.password is None:
            return source
    except ValueError:  # not a URL that parses: drop anything that looks like credentials
        return source.rpartition("@")[2] if "://" in source else source
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _label(source: str | os.PathLike[str]) -> str:
    """*source* as error messages quote it: without credentials and at most ``_LABEL_CHARS`` long."""
    text = _redact(source)
    return text if len(text) <= _LABEL_CHARS else f"{text[:_LABEL_CHARS]}... ({len(text)} characters)"


# --- decoding -----------------------------------------------------------------------------------


def _sniff_format(data: bytes) -> str:
    """The allowed format *data* starts like, decided before any Pillow parser runs."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:2] == b"BM":
        return "BMP"
    if not data:
        msg = "image data is empty (0 bytes)"
        raise ImageLoadError(msg, reason="corrupt")
    # The leading bytes are not quoted: they would put a file's first bytes (a key, a password
    # line) into mm_embedding_error, which /search returns.
    msg = f"data of {len(data)} bytes is not one of the allowed formats {', '.join(ALLOWED_FORMATS)}"
    raise ImageLoadError(msg, reason="format_not_allowed")


def _check_pixels(size: tuple[int, int], settings: Settings) -> None:
    """Refuse what Pillow would only warn about, per call, without touching its global limit."""
    limit = settings.image_max_pixels
    if Image.MAX_IMAGE_PIXELS is not None:
        limit = min(limit, Image.MAX_IMAGE_PIXELS)
    width, height = size
    if width * height > limit:
        msg = (
            f"image declares {width}x{height} = {width * height} pixels, over the limit of {limit} "
            "(image_max_pixels, MMOS_IMAGE_MAX_PIXELS); refused as a possible decompression bomb"
        )
        raise ImageLoadError(msg, reason="decompression_bomb")


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB for every mode: 16-bit grey scaled (not clipped), transparency flattened onto white."""
    if image.mode.startswith("I;16"):
        image = image.convert("I").point(lambda value: value / 256).convert("L")
    if image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, _WHITE)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image if image.mode == "RGB" else image.convert("RGB")
