"""Who may use the review page: the Host check (against DNS rebinding), the token off loopback, and
the Origin check of changes.

A page bound to loopback needs no token (only this machine reaches it), but it still checks the
Host header: a DNS-rebinding page (``evil.example`` made to resolve to 127.0.0.1) reaches a loopback
server too, and names itself in Host. Off loopback anyone on the network reaches the page, so it
needs the token printed at start-up, as Jupyter does: given once as ``?token=``, then kept in an
HttpOnly, SameSite=Strict cookie (and taken out of the address bar by a refresh the page itself
starts, not a redirect: a browser withholds a Strict cookie from every hop of a navigation that began
on another site, such as a link clicked in a chat). A change (POST, DELETE) whose ``Origin`` is not
the page itself is refused, token or not.
"""

from __future__ import annotations

import hmac
import html
import ipaddress
import re
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_ENV = "PROMPTCAM_REVIEW_TOKEN"
COOKIE_PREFIX = "promptcam_review_token_"  # + the server's port: two pages on one machine keep their own
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*")
BAD_HOST = "invalid host header: this review page answers to its own address only (see --allow-host)"
NEEDS_TOKEN = ("this review page needs its access token: open the address promptcam review printed when it "
               "started (http://HOST:PORT/?token=...)")
FOREIGN_ORIGIN = "change refused: its origin is not this review page"


def split_host(value: str) -> tuple[str, int | None] | None:
    """(host, port) of a Host header or an origin's authority, None when malformed.

    IPv6 addresses come in brackets (``[::1]:8787``); addresses are returned in their canonical
    spelling, names lower-cased without a trailing dot.
    """
    if value.startswith("["):
        inside, bracket, rest = value[1:].partition("]")
        address = _address(inside) if bracket else None
        if address is None or address.version != 6:
            return None
        host = str(address)
    else:
        host, colon, port = value.partition(":")
        host, rest = host.lower().removesuffix("."), colon + port
        address = _address(host)
        if address is not None:
            host = str(address)
        elif not HOST_NAME.fullmatch(host):
            return None
    if not rest:
        return host, None
    digits = rest[1:]
    if not rest.startswith(":") or not (digits.isascii() and digits.isdigit()) or len(digits) > 5:
        return None
    return (host, int(digits)) if int(digits) <= 65535 else None


def host_name(value: str) -> str | None:
    """A host name or address as given on the command line (IPv6 with or without brackets), normalised."""
    found = split_host(value) or (split_host(f"[{value}]") if ":" in value else None)
    return found[0] if found is not None else None


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Access:
    """The access rules of one review page.

    Attributes:
        bound: The address the server is bound to (canonical spelling).
        names: Further host names the page answers to (``--allow-host``; normalised).
        token: What a request must carry (cookie, or ``?token=`` once); None: no token (loopback).
    """

    bound: str
    names: frozenset[str] = field(default_factory=frozenset)
    token: str | None = None

    @classmethod
    def for_bind(cls, bound: str, *, names: Iterable[str] = (), token: str | None = None) -> Access:
        """The rules of a page bound to the address ``bound``: off loopback a token (``token``, else a
        fresh random one); on loopback none unless ``token`` is given.

        Raises:
            ValueError: ``bound`` is not an IP address, a name is not a host name, or ``token`` is blank.
        """
        address = ipaddress.ip_address(bound)
        if token is not None and not token.strip():
            raise ValueError("the access token must not be blank")
        if token is None and not address.is_loopback:
            token = secrets.token_urlsafe(32)
        allowed = set()
        for name in names:
            normal = host_name(name)
            if normal is None:
                raise ValueError(f"{name!r} is not a host name or address")
            allowed.add(normal)
        if address.is_unspecified and (own := host_name(socket.gethostname())) is not None:
            allowed.add(own)  # the name printed for the other machines on the network
        return cls(str(address), frozenset(allowed), token)

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.bound).is_loopback

    @property
    def wildcard(self) -> bool:
        return ipaddress.ip_address(self.bound).is_unspecified

    def allows_host(self, host: str) -> bool:
        """Whether a (normalised) Host may name this page: the bound address, a name given, localhost
        names on loopback; bound to every address, any address (an address is no DNS name to rebind)."""
        if host == self.bound or host in self.names:
            return True
        if _address(host) is not None:
            return self.wildcard
        return (self.loopback or self.wildcard) and (host == "localhost" or host.endswith(".localhost"))


def review_urls(bound: str, port: int, token: str | None) -> list[str]:
    """The addresses to open the page at (the token in them): the bound address (IPv6 in brackets);
    bound to every address, this machine's loopback address and then its host name."""
    query = "?" + urlencode({"token": token}) if token else ""
    address = ipaddress.ip_address(bound)
    hosts = [str(address)]
    if address.is_unspecified:
        hosts = ["127.0.0.1" if address.version == 4 else "::1"] + [n for n in [host_name(socket.gethostname())] if n]
    return [f"http://{f'[{h}]' if ':' in h else h}:{port}/{query}" for h in hosts]


class AccessMiddleware:
    """ASGI middleware that enforces an ``Access``: 400 for a foreign Host, 403 without the token or
    for a change from another origin; a page asked for with ``?token=`` stores it in the cookie."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stop = self.answer(Request(scope)) if scope["type"] == "http" else None
        await (stop or self.app)(scope, receive, send)

    def answer(self, request: Request) -> Response | None:
        """The response that ends ``request`` here (a refusal, or the hop storing the token); None: pass."""
        host = split_host(request.headers.get("host", ""))
        if host is None or not self.access.allows_host(host[0]):
            return refusal(request, 400, BAD_HOST)
        token = self.access.token
        if token is not None and not _same(request.cookies.get(cookie_name(request)), token):
            if not _same(request.query_params.get("token"), token):
                return refusal(request, 403, NEEDS_TOKEN)
            if request.method in ("GET", "HEAD"):
                return _store_token(request, token)
        if request.method in UNSAFE_METHODS and not _same_origin(request, host):
            return refusal(request, 403, FOREIGN_ORIGIN)
        return None


def cookie_name(request: Request) -> str:
    server = request.scope.get("server") or ("", 0)
    return f"{COOKIE_PREFIX}{server[1]}"


def refusal(request: Request, status: int, message: str) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status)
    return PlainTextResponse(message, status_code=status)


def _same(offered: str | None, token: str) -> bool:
    if offered is None:
        return False
    return hmac.compare_digest(offered.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass"))


def _store_token(request: Request, token: str) -> Response:
    """The token set in the cookie, and a refresh to the same page without ``token`` in its address."""
    rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
    path = "/" + request.scope["path"].lstrip("/")  # never //host: the refresh stays on this page
    target = html.escape(quote(path) + ("?" + urlencode(rest) if rest else ""), quote=True)
    response = HTMLResponse(f'<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0; '
                            f'url={target}"><title>promptcam review</title><p><a href="{target}">Open the review '
                            "page</a></p>", headers={"Cache-Control": "no-store"})
    response.set_cookie(cookie_name(request), token, httponly=True, samesite="strict", path="/")
    return response


def _same_origin(request: Request, host: tuple[str, int | None]) -> bool:
    """No ``Origin`` (not a browser's cross-site request), or the page's own scheme, host and port."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    scheme, separator, authority = origin.partition("://")
    own = request.scope.get("scheme", "http")
    theirs = split_host(authority) if separator and scheme.lower() == own else None
    default = 443 if own == "https" else 80
    return theirs is not None and (theirs[0], theirs[1] or default) == (host[0], host[1] or default)
