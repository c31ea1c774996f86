"""Image loading: hostile sources are refused with a reason; good ones come out upright RGB.

No test may send a packet off this machine: the autouse ``socket_guard`` fixture lets sockets
reach loopback only and answers DNS from ``FAKE_DNS`` (or numeric hosts) without a lookup, and
the positive HTTP cases use a server of their own on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import io
import ipaddress
import os
import socket
import socketserver
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mm_opensearch.config import Settings
from mm_opensearch.errors import ConfigError, ImageLoadError
from mm_opensearch.images import decode_image, load_image, read_image_bytes

# --- socket guard -------------------------------------------------------------------------------

FAKE_DNS = {
    "evil.example": ["10.0.0.1"],
    "metadata.example": ["169.254.169.254"],
    "mapped.example": ["::ffff:127.0.0.1"],
    "mixed.example": ["93.184.216.34", "10.0.0.1"],
    "pinned.example": ["127.0.0.1"],
}
_real_getaddrinfo = socket.getaddrinfo


class SocketGuardViolation(AssertionError):
    """A test tried to reach a non-loopback address."""


def _is_loopback_destination(address: Any) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    try:
        ip = ipaddress.ip_address(str(address[0]).split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def fake_getaddrinfo(
    host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
) -> Any:
    name = host.decode() if isinstance(host, bytes) else host
    if name in FAKE_DNS:
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0))
            if ":" in a
            else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in FAKE_DNS[name]
        ]
    name = "127.0.0.1" if name == "localhost" else name
    return _real_getaddrinfo(name, port, family, type, proto, flags | socket.AI_NUMERICHOST)


@pytest.fixture(autouse=True)
def socket_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    violations: list[Any] = []

    def check(address: Any) -> None:
        if not _is_loopback_destination(address):
            violations.append(address)
            raise SocketGuardViolation(f"test tried to reach {address!r}; only loopback is allowed")

    def guard_method(real: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(sock: socket.socket, address: Any, *args: Any) -> Any:
            check(address)
            return real(sock, address, *args)

        return guarded

    def guarded_sendto(sock: socket.socket, data: bytes, *args: Any) -> Any:
        check(args[-1])
        return real_sendto(sock, data, *args)

    def guarded_create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
        check(address)
        return real_create_connection(address, *args, **kwargs)

    real_sendto, real_create_connection = socket.socket.sendto, socket.create_connection
    monkeypatch.setattr(socket.socket, "connect", guard_method(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guard_method(socket.socket.connect_ex))
    monkeypatch.setattr(socket.socket, "sendto", guarded_sendto)
    monkeypatch.setattr(socket, "create_connection", guarded_create_connection)
    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    yield violations
    assert not violations, f"non-loopback connection attempts: {violations}"


@pytest.mark.parametrize(
    ("address", "allowed"),
    [(("127.0.0.1", 80), True), (("::1", 80, 0, 0), True), (("::ffff:127.0.0.2", 80), True),
     (("10.0.0.1", 80), False), (("93.184.216.34", 443), False), (("example.com", 80), False)],
)
def test_socket_guard_lets_only_loopback_through(address: Any, allowed: bool) -> None:
    assert _is_loopback_destination(address) is allowed


# --- image bytes ------------------------------------------------------------------------------


def _encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _jpeg(size: tuple[int, int] = (32, 24), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    return _encode(Image.new("RGB", size, color), "JPEG", quality=95)


def _png_declaring(width: int, height: int) -> bytes:
    """A few-hundred-byte PNG whose header claims *width* x *height* pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _noise_jpeg() -> bytes:
    return _encode(Image.effect_noise((128, 128), 64).convert("RGB"), "JPEG")


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'

# --- loopback HTTP server -----------------------------------------------------------------------

Route = Callable[[http.server.BaseHTTPRequestHandler], None]


def _body(data: bytes, content_type: str = "image/jpeg") -> Route:
    def route(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return route


def _redirect(location: str) -> Route:
    def route(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


def _stream(chunk: bytes, count: int, delay_s: float = 0.0, declared: int | None = None) -> Route:
    """HTTP/1.0 body delimited by closing the connection; no Content-Length unless *declared*."""

    def route(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        if declared is not None:
            handler.send_header("Content-Length", str(declared))
        handler.end_headers()
        for _ in range(count):
            handler.wfile.write(chunk)
            handler.wfile.flush()
            time.sleep(delay_s)

    return route


def _slow(delay_s: float) -> Route:
    def route(handler: http.server.BaseHTTPRequestHandler) -> None:
        time.sleep(delay_s)
        _body(_jpeg())(handler)

    return route


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _LoopbackServer

    def do_GET(self) -> None:
        self.server.seen_hosts.append(self.headers["Host"])
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        try:
            route(self)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on purpose (size or time limit)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _LoopbackServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        self.seen_hosts: list[str] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:  # skip HTTPServer's getfqdn(): no reverse DNS lookup
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


RED_JPEG = _jpeg()
ROUTES: dict[str, Route] = {
    "/red.jpg": _body(RED_JPEG),
    "/r1": _redirect("/red.jpg"),
    "/r2": _redirect("/r1"),
    "/r3": _redirect("/r2"),
    "/r4": _redirect("/r3"),
    "/loop": _redirect("/loop"),
    "/to-private": _redirect("http://10.0.0.1/a.jpg"),
    "/to-metadata": _redirect("http://169.254.169.254/latest/meta-data/"),
    "/to-evil": _redirect("http://evil.example/a.jpg"),
    "/to-file": _redirect("file:///etc/passwd"),
    "/big-streamed": _stream(b"\xff" * 8192, 32),
    "/big-declared": _stream(b"\xff" * 8192, 1, declared=1024 * 1024),
    "/slow": _slow(1.5),
    "/drip": _stream(b"\xff", 60, delay_s=0.05),
    "/pdf.jpg": _body(PDF),
    "/svg.jpg": _body(SVG),
    "/text.jpg": _body(b"hello, this is not an image"),
    "/truncated.jpg": _body(_noise_jpeg()[:1500]),
    "/bomb.png": _body(_png_declaring(100_000, 100_000), "image/png"),
}


@pytest.fixture(scope="module")
def server() -> Iterator[_LoopbackServer]:
    httpd = _LoopbackServer(ROUTES)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **overrides)


LOOPBACK_OK = {"image_fetch_allow_networks": ["127.0.0.0/8"]}


def _reason_of(call: Callable[[], Any]) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as caught:
        call()
    return caught.value


# --- hostile inputs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason", "cause"),
    [
        ("http://10.0.0.1/a.jpg", "address_not_allowed", "10.0.0.1, a private address"),
        ("http://172.16.5.4/a.jpg", "address_not_allowed", "private"),
        ("http://192.168.1.1/a.jpg", "address_not_allowed", "private"),
        ("http://127.0.0.1:9/a.jpg", "address_not_allowed", "loopback"),
        ("http://2130706433/a.jpg", "address_not_allowed", "127.0.0.1, a loopback"),
        ("http://0.0.0.0/a.jpg", "address_not_allowed", "unspecified"),
        ("http://169.254.1.1/a.jpg", "address_not_allowed", "link-local"),
        ("http://224.0.0.1/a.jpg", "address_not_allowed", "multicast"),
        ("http://100.64.0.1/a.jpg", "address_not_allowed", "reserved"),
        ("http://169.254.169.254/latest/meta-data/", "address_not_allowed", "cloud metadata"),
        ("http://100.100.100.200/latest/meta-data/", "address_not_allowed", "cloud metadata"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "address_not_allowed", "cloud metadata"),
        ("http://[::1]/a.jpg", "address_not_allowed", "loopback"),
        ("http://[fe80::1]/a.jpg", "address_not_allowed", "link-local"),
        ("http://[fd12:3456::1]/a.jpg", "address_not_allowed", "private"),
        ("http://[::ffff:127.0.0.1]/a.jpg", "address_not_allowed", "loopback"),
        ("http://[::ffff:169.254.169.254]/a.jpg", "address_not_allowed", "cloud metadata"),
        ("http://[2002:a00:1::1]/a.jpg", "address_not_allowed", "6to4 address embedding 10.0.0.1"),
        ("http://evil.example/a.jpg", "address_not_allowed", "'evil.example' resolves to 10.0.0.1"),
        ("http://metadata.example/a.jpg", "address_not_allowed", "169.254.169.254, a cloud metadata"),
        ("http://mapped.example/a.jpg", "address_not_allowed", "loopback"),
        ("https://mixed.example/a.jpg", "address_not_allowed", "10.0.0.1"),
        ("http://nowhere.example/a.jpg", "not_found", "does not resolve"),
        ("http:///a.jpg", "invalid_url", "has no host"),
        ("ftp://example.com/a.jpg", "scheme_not_allowed", "'ftp'"),
        ("data:image/png;base64,iVBORw0KGgo=", "scheme_not_allowed", "'data'"),
        ("gopher://example.com/", "scheme_not_allowed", "'gopher'"),
        ("file://fileserver/share/a.jpg", "invalid_url", "must name a local file"),
    ],
)
def test_hostile_url_is_refused_before_any_connection(url: str, reason: str, cause: str) -> None:
    error = _reason_of(lambda: load_image(url, _settings()))
    assert error.reason == reason
    assert cause in str(error)


def test_loopback_server_is_refused_without_allow_list(server: _LoopbackServer) -> None:
    error = _reason_of(lambda: load_image(server.base + "/red.jpg", _settings()))
    assert error.reason == "address_not_allowed"
    assert "127.0.0.1, a loopback address" in str(error)


@pytest.mark.parametrize(
    ("path", "reason", "cause"),
    [
        ("/to-private", "address_not_allowed", "10.0.0.1, a private address"),
        ("/to-metadata", "address_not_allowed", "169.254.169.254, a cloud metadata"),
        ("/to-evil", "address_not_allowed", "'evil.example' resolves to 10.0.0.1"),
        ("/to-file", "scheme_not_allowed", "redirects to a 'file' URL"),
        ("/loop", "too_many_redirects", "more than 3 redirects"),
        ("/r4", "too_many_redirects", "more than 3 redirects"),
        ("/missing.jpg", "http_error", "HTTP 404"),
        ("/big-streamed", "too_large", "sent more, over image_max_bytes=65536"),
        ("/big-declared", "too_large", "declares 1048576 bytes"),
        ("/slow", "timeout", "image_fetch_timeout_s=0.5"),
        ("/drip", "timeout", "image_fetch_timeout_s=0.5"),
        ("/pdf.jpg", "format_not_allowed", "not one of the allowed formats"),
        ("/svg.jpg", "format_not_allowed", "not one of the allowed formats"),
        ("/text.jpg", "format_not_allowed", "not one of the allowed formats"),
        ("/truncated.jpg", "corrupt", "truncated"),
        ("/bomb.png", "decompression_bomb", "decompression bomb"),
    ],
)
def test_allowed_server_cannot_smuggle_hostile_content(
    server: _LoopbackServer, path: str, reason: str, cause: str
) -> None:
    settings = _settings(**LOOPBACK_OK, image_max_bytes=64 * 1024, image_fetch_timeout_s=0.5)
    started = time.monotonic()
    error = _reason_of(lambda: load_image(server.base + path, settings))
    assert error.reason == reason
    assert cause in str(error)
    assert str(server.server_port) in str(error)  # the message names the source
    assert time.monotonic() - started < 1.2


def test_metadata_address_is_refused_even_when_allow_listed() -> None:
    settings = _settings(image_fetch_allow_networks=["169.254.0.0/16"])
    error = _reason_of(lambda: load_image("http://169.254.169.254/latest/meta-data/", settings))
    assert error.reason == "address_not_allowed"


@pytest.mark.parametrize(
    ("data", "settings", "reason", "cause"),
    [
        (_noise_jpeg()[:1500], {}, "corrupt", "truncated"),
        (b"\xff\xd8\xff\xe0", {}, "corrupt", "JPEG data"),
        (b"", {}, "corrupt", "empty"),
        (PDF, {}, "format_not_allowed", f"data of {len(PDF)} bytes is not one of the allowed formats"),
        (SVG, {}, "format_not_allowed", "allowed formats JPEG, PNG, WEBP, GIF, BMP"),
        (_encode(Image.new("RGB", (4, 4)), "TIFF"), {}, "format_not_allowed", "not one of the allowed formats"),
        (_png_declaring(100_000, 100_000), {}, "decompression_bomb", "decompression bomb"),
        (_png_declaring(8000, 6000), {}, "decompression_bomb", "8000x6000 = 48000000 pixels"),
        (_jpeg((100, 100)), {"image_max_pixels": 9999}, "decompression_bomb", "image_max_pixels"),
    ],
)
def test_hostile_bytes_are_refused(data: bytes, settings: dict[str, Any], reason: str, cause: str) -> None:
    error = _reason_of(lambda: decode_image(data, _settings(**settings)))
    assert error.reason == reason
    assert cause in str(error)


def test_local_file_problems_are_named(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff" + b"\0" * 2048)
    cases = [
        (tmp_path / "missing.jpg", "not_found", "does not exist"),
        (tmp_path, "unreadable", "not a regular file"),
        (big, "too_large", "is 2051 bytes, over image_max_bytes=1024"),
    ]
    for path, reason, cause in cases:
        error = _reason_of(lambda: load_image(path, _settings(image_max_bytes=1024), roots=[tmp_path]))
        assert (path.name, error.reason, cause in str(error)) == (path.name, reason, True)


def test_invalid_allow_list_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="image_fetch_allow_networks"):
        load_image("http://127.0.0.1/a.jpg", _settings(image_fetch_allow_networks=["not-a-cidr"]))


# --- good inputs -------------------------------------------------------------------------------


def test_local_path_and_file_url_load_as_rgb(tmp_path: Path) -> None:
    path = tmp_path / "red image.jpg"
    path.write_bytes(RED_JPEG)
    for source in (path, str(path), path.as_uri()):
        image = load_image(source, _settings(), roots=[tmp_path])
        assert (image.mode, image.size) == ("RGB", (32, 24))
        assert image.getpixel((16, 12)) == pytest.approx((200, 30, 30), abs=4)
    assert read_image_bytes(path.as_uri(), _settings(), roots=[tmp_path]) == RED_JPEG


@pytest.mark.parametrize("path", ["/red.jpg", "/r3"])
def test_allow_listed_loopback_server_serves_images(server: _LoopbackServer, path: str) -> None:
    assert read_image_bytes(server.base + path, _settings(**LOOPBACK_OK)) == RED_JPEG
    assert load_image(server.base + path, _settings(**LOOPBACK_OK)).size == (32, 24)


def test_connection_goes_to_the_validated_address_with_the_original_host(server: _LoopbackServer) -> None:
    url = f"http://pinned.example:{server.server_port}/red.jpg"
    assert read_image_bytes(url, _settings(**LOOPBACK_OK)) == RED_JPEG
    assert server.seen_hosts[-1] == f"pinned.example:{server.server_port}"


def test_host_is_resolved_once_so_rebinding_cannot_redirect_the_connection(
    server: _LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = iter(["127.0.0.1", "10.0.0.1", "10.0.0.1"])

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]
        return fake_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    url = f"http://rebind.example:{server.server_port}/red.jpg"
    assert read_image_bytes(url, _settings(**LOOPBACK_OK)) == RED_JPEG
    assert next(answers) == "10.0.0.1"  # only the first answer was consumed


def test_exif_orientation_is_applied() -> None:
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored column 0 is the visual top: display needs a 90 degree clockwise turn
    image = decode_image(_encode(stored, "JPEG", exif=exif, quality=95), _settings())
    assert image.size == (20, 40)
    assert image.getpixel((10, 5)) == pytest.approx((255, 0, 0), abs=8)
    assert image.getpixel((10, 35)) == pytest.approx((0, 0, 255), abs=8)


def _paletted_with_transparency() -> Image.Image:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 1
    return image


def _sixteen_bit_grey() -> Image.Image:
    return Image.new("I;16", (8, 8), 128 * 256)


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 0, 255))]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


@pytest.mark.parametrize(
    ("data", "pixel"),
    [
        (_encode(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG"), (255, 255, 255)),
        (_encode(Image.new("RGBA", (8, 8), (255, 0, 0, 128)), "PNG"), (255, 127, 127)),
        (_encode(Image.new("LA", (8, 8), (0, 0)), "PNG"), (255, 255, 255)),
        (_encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95), (255, 0, 0)),
        (_encode(Image.new("L", (8, 8), 128), "PNG"), (128, 128, 128)),
        (_encode(_sixteen_bit_grey(), "PNG"), (128, 128, 128)),
        (_encode(_paletted_with_transparency(), "PNG"), (255, 255, 255)),
        (_encode(_paletted_with_transparency(), "GIF"), (255, 255, 255)),
        (_animated_gif(), (255, 0, 0)),
        (_encode(Image.new("RGB", (8, 8), (0, 200, 0)), "BMP"), (0, 200, 0)),
        (_encode(Image.new("RGB", (8, 8), (0, 200, 0)), "WEBP", lossless=True), (0, 200, 0)),
    ],
    ids=["rgba-clear", "rgba-half", "la", "cmyk", "l", "i16", "p-png", "p-gif", "gif-frame-0", "bmp", "webp"],
)
def test_every_mode_comes_out_rgb(data: bytes, pixel: tuple[int, int, int]) -> None:
    image = decode_image(data, _settings())
    assert (image.mode, image.size) == ("RGB", (8, 8))
    assert image.getpixel((4, 4)) == pytest.approx(pixel, abs=4)


# --- malformed values: each fails on its own, as an ImageLoadError ------------------------------

NASTY_VALUES: list[Any] = [
    "images/a\0b.jpg", "\0", "file:///tmp/a\0.jpg", "http://127.0.0.1/\0.jpg",
    "http://[::1/x", "http://[::1", "https://[zz]/a.jpg", "http://[::1]]/a.jpg", "http://a:99999/x.jpg",
    "http://a:port/x.jpg", "http://:80/x.jpg", "http://exa mple.com/a.jpg", "http://user:pw@[::1/x",
    "http://\ud800/a.jpg", "images/\ud800.jpg", "http://" + "a" * 300 + ".example/a.jpg",
    "http://xn--/a.jpg", "http://a..b/a.jpg", "HTTP://[::1/x", "https://", "http://?", "http://#",
    "javascript:alert(1)", "data:,", "mailto:a@b", "c:/windows/win.ini", "\\\\server\\share\\a.jpg",
    "file:", "file://", "file:///", "file:///%00", "file://host:bad/a.jpg", "file://[::1/x",
    "", " ", "\n", "../" * 2000, "a" * 10_000_000, "http://example.com/" + "a" * 100_000,
    12345, 1.5, True, {"url": "x.jpg"}, ["x.jpg"], b"x.jpg", object(),
]


@pytest.mark.parametrize("value", NASTY_VALUES, ids=lambda v: f"{type(v).__name__}:{str(v)[:24]!r}")
def test_a_malformed_image_value_raises_only_an_image_load_error(tmp_path: Path, value: Any) -> None:
    settings = _settings(image_fetch_timeout_s=0.5)
    with pytest.raises(ImageLoadError) as caught:
        read_image_bytes(value, settings, roots=[tmp_path])
    assert caught.value.reason
    assert len(str(caught.value)) < 1000  # a huge value is not echoed back


def test_a_non_string_image_value_is_named_by_its_type() -> None:
    error = _reason_of(lambda: read_image_bytes(12345, _settings()))
    assert (error.reason, "type int is not a path or URL" in str(error)) == ("invalid_url", True)


# --- local paths are confined to the roots ---------------------------------------------------------


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """(root, outside): a root holding red.jpg and a sibling folder outside it holding out.jpg."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "red.jpg").write_bytes(RED_JPEG)
    (outside / "out.jpg").write_bytes(RED_JPEG)
    return root, outside


def test_paths_outside_the_roots_are_refused_with_the_roots_named(roots: tuple[Path, Path]) -> None:
    root, outside = roots
    (root / "link-out.jpg").symlink_to(outside / "out.jpg")
    (root / "dir-out").symlink_to(outside)
    sources = [
        str(root / ".." / "outside" / "out.jpg"),  # ../ out of the root
        str(outside / "out.jpg"),  # absolute path elsewhere
        str(root / "link-out.jpg"),  # a symlink inside pointing out
        str(root / "dir-out" / "out.jpg"),  # a linked folder pointing out
        (outside / "out.jpg").as_uri(),
        "file:///etc/passwd",
        "/etc/shadow",
        str(root / "../../../../../../etc/shadow"),
        str(root / "missing" / ".." / ".." / "outside" / "missing.jpg"),  # existence outside is not told
    ]
    for source in sources:
        error = _reason_of(lambda: read_image_bytes(source, _settings(), roots=[root]))
        assert (source, error.reason) == (source, "path_not_allowed")
        assert str(root) in str(error) and "MMOS_IMAGE_ROOTS" in str(error)


def test_paths_inside_the_roots_load_links_included(roots: tuple[Path, Path]) -> None:
    root, outside = roots
    (root / "sub").mkdir()
    (root / "sub" / "link.jpg").symlink_to(root / "red.jpg")
    linked_root = outside / "linked-root"
    linked_root.symlink_to(root)  # the root itself given through a symlink
    for source in [str(root / "red.jpg"), str(root / "sub" / ".." / "red.jpg"), str(root / "sub" / "link.jpg"),
                   (root / "red.jpg").as_uri(), root / "red.jpg"]:
        assert read_image_bytes(source, _settings(), roots=[root]) == RED_JPEG
    assert read_image_bytes(str(root / "red.jpg"), _settings(), roots=[linked_root]) == RED_JPEG
    assert read_image_bytes(str(outside / "out.jpg"), _settings(), roots=[root, outside]) == RED_JPEG


def test_without_roots_no_local_path_is_read(roots: tuple[Path, Path]) -> None:
    root, _ = roots
    error = _reason_of(lambda: load_image(root / "red.jpg", _settings()))
    assert error.reason == "path_not_allowed" and "MMOS_IMAGE_ROOTS" in str(error)


def test_a_fifo_inside_the_roots_is_refused_without_blocking(roots: tuple[Path, Path]) -> None:
    root, _ = roots
    os.mkfifo(root / "pipe.jpg")
    error = _reason_of(lambda: read_image_bytes(str(root / "pipe.jpg"), _settings(), roots=[root]))
    assert error.reason == "unreadable" and "not a regular file" in str(error)


def test_image_roots_setting_is_comma_separated_and_defaults_to_the_callers_folder(tmp_path: Path) -> None:
    assert _settings().image_roots_or(tmp_path) == (tmp_path,)
    configured = _settings(image_roots="/data/a, /data/b")
    assert configured.image_roots_or(tmp_path) == (Path("/data/a"), Path("/data/b"))


# --- no file or response contents in errors --------------------------------------------------------

# The marker is the file's first 12 bytes: what the sniffer's message used to quote.
SECRET = b"S3CR3T-7f3a9 root:x:0:0:hunter2"
SECRET_MARK = "S3CR3T-7f3a9"


def test_file_contents_never_appear_in_errors(roots: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    root, outside = roots
    (root / "secret.jpg").write_bytes(SECRET + b"\n" * 64)
    (root / "secret-jpeg.jpg").write_bytes(b"\xff\xd8\xff" + SECRET)  # sniffs as JPEG, fails to decode
    (outside / "secret.jpg").write_bytes(SECRET)
    caplog.set_level("DEBUG")
    errors = [
        _reason_of(lambda: load_image(str(root / "secret.jpg"), _settings(), roots=[root])),
        _reason_of(lambda: load_image(str(root / "secret-jpeg.jpg"), _settings(), roots=[root])),
        _reason_of(lambda: load_image(str(outside / "secret.jpg"), _settings(), roots=[root])),
        _reason_of(lambda: decode_image(SECRET, _settings())),
    ]
    assert [e.reason for e in errors] == ["format_not_allowed", "corrupt", "path_not_allowed", "format_not_allowed"]
    for error in errors:
        assert SECRET_MARK not in str(error) and "hunter2" not in str(error)
    assert SECRET_MARK not in caplog.text


class _RawServer:
    """A one-connection-at-a-time TCP server on 127.0.0.1 that answers every request with *reply*,
    *delay_s* seconds between bytes, for at most *max_s* seconds per connection."""

    def __init__(self, reply: bytes, delay_s: float = 0.0, max_s: float = 12.0) -> None:
        self.reply, self.delay_s, self.max_s = reply, delay_s, max_s
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.05)  # accept() wakes up to see the stop flag
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            if not self.delay_s:
                conn.sendall(self.reply)
                return
            ends = time.monotonic() + self.max_s
            for i in range(len(self.reply)):
                if self.stop.is_set() or time.monotonic() > ends:
                    return
                conn.sendall(self.reply[i : i + 1])
                time.sleep(self.delay_s)
        except OSError:
            pass  # the client gave up

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def raw_server(request: pytest.FixtureRequest) -> Iterator[_RawServer]:
    server = _RawServer(*request.param)
    yield server
    server.close()


DRIBBLED_HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n" + b"X-Padding: " + b"a" * 200 + b"\r\n\r\n"


@pytest.mark.parametrize("raw_server", [(DRIBBLED_HEADERS, 0.5)], indirect=True)
def test_one_deadline_covers_the_whole_fetch_even_when_headers_dribble(raw_server: _RawServer) -> None:
    settings = _settings(**LOOPBACK_OK, image_fetch_timeout_s=2.0)
    started = time.monotonic()
    error = _reason_of(lambda: read_image_bytes(raw_server.base + "/a.jpg", settings))
    elapsed = time.monotonic() - started
    assert error.reason == "timeout" and "image_fetch_timeout_s=2.0" in str(error)
    assert elapsed < 2.0 + 0.75


@pytest.mark.parametrize("raw_server", [(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n\xff\xd8\xff", 0.3)],
                         indirect=True)
def test_one_deadline_covers_a_body_that_stops_coming(raw_server: _RawServer) -> None:
    settings = _settings(**LOOPBACK_OK, image_fetch_timeout_s=1.0)
    started = time.monotonic()
    error = _reason_of(lambda: read_image_bytes(raw_server.base + "/a.jpg", settings))
    assert error.reason == "timeout" and time.monotonic() - started < 1.0 + 0.75


SECRET_REPLIES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(SECRET), SECRET),  # body is not an image
    b"HTTP/1.1 404 " + SECRET + b"\r\nContent-Length: 0\r\n\r\n",  # reason phrase
    b"HTTP/1.1 200 OK\r\n" + SECRET + b"\r\n\r\n",  # a malformed header line, which h11 quotes
    b"HTTP/1.1 302 Found\r\nLocation: gopher://" + SECRET + b"/\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 9" + SECRET + b"\r\n\r\n",
    SECRET + b"\r\n\r\n",  # not HTTP at all
]


@pytest.mark.parametrize("raw_server", [(reply,) for reply in SECRET_REPLIES], indirect=True)
def test_response_contents_never_appear_in_errors(raw_server: _RawServer) -> None:
    error = _reason_of(lambda: load_image(raw_server.base + "/a.jpg", _settings(**LOOPBACK_OK)))
    assert error.reason in {"format_not_allowed", "http_error", "connection_failed", "scheme_not_allowed"}
    assert SECRET_MARK not in str(error) and "hunter2" not in str(error)
