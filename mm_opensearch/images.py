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

Every failure raises :class:`~mm_opensearch.errors.ImageLoadError` whose ``reason`` is one of
``not_found``, ``unreadable``, ``invalid_url``, ``scheme_not_allowed``, ``address_not_allowed``,
``connection_failed``, ``timeout``, ``http_error``, ``too_many_redirects``, ``too_large``,
``format_not_allowed``, ``decompression_bomb`` or ``corrupt``, so the encoder can keep the
product's text vector and report why its image is missing.
"""

from __future__ import annotations

import io
import ipaddress
import os
import socket
import stat
import time
from pathlib import Path
from urllib.parse import SplitResult, urlsplit, urlunsplit
from urllib.request import url2pathname

import httpx
from PIL import Image, ImageOps

from mm_opensearch.config import Settings, get_settings
from mm_opensearch.errors import ConfigError, ImageLoadError

__all__ = ["ALLOWED_FORMATS", "MAX_REDIRECTS", "decode_image", "load_image", "read_image_bytes"]

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
MAX_REDIRECTS = 3

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


def load_image(source: str | os.PathLike[str], settings: Settings | None = None) -> Image.Image:
    """Read and decode one image into RGB; every failure is an ``ImageLoadError`` naming *source*."""
    settings = settings or get_settings()
    data = read_image_bytes(source, settings)
    try:
        return decode_image(data, settings)
    except ImageLoadError as e:
        msg = f"image {_redact(source)!r}: {e}"
        raise ImageLoadError(msg, reason=e.reason) from e


def read_image_bytes(source: str | os.PathLike[str], settings: Settings | None = None) -> bytes:
    """The raw bytes of an image file or URL, within the byte and time limits.

    Kept apart from decoding so callers can key caches on the bytes' hash before paying for a decode.
    """
    settings = settings or get_settings()
    if isinstance(source, os.PathLike):
        return _read_local(Path(source), settings)
    parts = urlsplit(source)
    if parts.scheme in ("http", "https"):
        return _fetch_http(source, settings)
    if parts.scheme == "file":
        return _read_local(_file_url_path(parts, source), settings)
    if not parts.scheme:
        return _read_local(Path(source), settings)
    msg = (
        f"image {_redact(source)!r}: scheme {parts.scheme!r} is not allowed; "
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
        msg = f"{e}; refused as a possible decompression bomb"
        raise ImageLoadError(msg, reason="decompression_bomb") from e
    except Exception as e:  # Pillow raises OSError, SyntaxError, struct.error, EOFError... on bad bytes
        msg = f"{image_format} data is truncated or corrupt ({type(e).__name__}: {e}); re-export the image"
        raise ImageLoadError(msg, reason="corrupt") from e


# --- local files ------------------------------------------------------------------------------


def _file_url_path(parts: SplitResult, source: str) -> Path:
    if parts.netloc not in ("", "localhost"):
        msg = f"image {source!r}: a file:// URL must name a local file (file:///path), not {parts.netloc!r}"
        raise ImageLoadError(msg, reason="invalid_url")
    return Path(url2pathname(parts.path))


def _read_local(path: Path, settings: Settings) -> bytes:
    limit = settings.image_max_bytes
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            msg = f"image {str(path)!r} is not a regular file; give the path of an image file"
            raise ImageLoadError(msg, reason="unreadable")
        if info.st_size > limit:
            raise _too_large(str(path), f"is {info.st_size} bytes", settings)
        with path.open("rb") as file:
            data = file.read(limit + 1)
    except FileNotFoundError as e:
        msg = f"image {str(path)!r} does not exist; check the path (relative paths start at {os.getcwd()!r})"
        raise ImageLoadError(msg, reason="not_found") from e
    except OSError as e:
        msg = f"image {str(path)!r} cannot be read ({e}); check its permissions"
        raise ImageLoadError(msg, reason="unreadable") from e
    if len(data) > limit:  # the file grew after stat()
        raise _too_large(str(path), "grew while being read", settings)
    return data


# --- http(s) ------------------------------------------------------------------------------------


def _fetch_http(source: str, settings: Settings) -> bytes:
    allowed = _allowed_networks(settings)
    deadline = time.monotonic() + settings.image_fetch_timeout_s
    label = _redact(source)
    try:
        url = httpx.URL(source)
        for _hop in range(MAX_REDIRECTS + 1):
            addresses = _validated_addresses(url, allowed, label)
            location, body = _get_from_any(url, addresses, deadline, label, settings)
            if location is None:
                return body
            url = url.join(location)
            if url.scheme not in ("http", "https"):
                target = _redact(location)
                msg = f"image {label!r} redirects to {target!r}; only http(s) redirects are followed"
                raise ImageLoadError(msg, reason="scheme_not_allowed")
    except httpx.TimeoutException as e:
        raise _timeout(label, settings) from e
    except httpx.InvalidURL as e:
        msg = f"image {label!r}: invalid URL ({e})"
        raise ImageLoadError(msg, reason="invalid_url") from e
    except httpx.HTTPError as e:
        msg = f"image {label!r}: connection failed ({type(e).__name__}: {e}); check that the server is up"
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
        msg = f"image {label!r}: URL {_redact(str(url))!r} has no host"
        raise ImageLoadError(msg, reason="invalid_url")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        msg = f"image {label!r}: host {host!r} does not resolve ({e}); check the URL"
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
    certificate was not checked against.
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _timeout(label, settings)
    host = url.raw_host.decode("ascii")
    headers = {"Host": url.netloc.decode("ascii"), "Accept": "image/*", "User-Agent": "mm-opensearch"}
    extensions = {"sni_hostname": host} if url.scheme == "https" else {}
    pinned = url.copy_with(host=str(address))
    with (
        httpx.Client(trust_env=False, timeout=remaining) as client,
        client.stream("GET", pinned, headers=headers, extensions=extensions) as response,
    ):
        if response.status_code in _REDIRECT_STATUSES and "Location" in response.headers:
            return response.headers["Location"], b""
        if not response.is_success:
            msg = f"image {label!r}: server answered HTTP {response.status_code} {response.reason_phrase}"
            raise ImageLoadError(msg, reason="http_error")
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > settings.image_max_bytes:
            raise _too_large(label, f"declares {declared} bytes", settings)
        body = bytearray()
        for chunk in response.iter_bytes():  # decompressed bytes: a gzip bomb is capped too
            body += chunk
            if len(body) > settings.image_max_bytes:
                raise _too_large(label, "sent more", settings)
            if time.monotonic() > deadline:
                raise _timeout(label, settings)
        return None, bytes(body)


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
    parts = urlsplit(source)
    if parts.username is None and parts.password is None:
        return source
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


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
    msg = f"data starting {data[:12]!r} is not one of the allowed formats {', '.join(ALLOWED_FORMATS)}"
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
