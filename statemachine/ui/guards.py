"""What keeps other sites away from the viewer: security headers on every response, a Host
allow-list against DNS rebinding, and the checks an action (POST) must pass.

A page of another site may make the browser send requests to the viewer; these make sure it
can neither read the answers (Host check, no CORS), frame the page (CSP frame-ancestors,
X-Frame-Options) nor trigger an action (same-origin check, custom header, token).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
from collections.abc import Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
WILDCARDS = {"0.0.0.0", "::", ""}
TOKEN_HEADER = "x-statemachine-token"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'self'")
HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cross-Origin-Resource-Policy": "same-origin",
           "Cross-Origin-Opener-Policy": "same-origin"}


def is_loopback(host: str) -> bool:
    """Whether listening on `host` is reachable from this machine only."""
    if host.strip("[]") in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(bind: str, extra: Iterable[str] = ()) -> set[str]:
    """The host names the Host header may carry: loopback names, the bind address, this
    machine's host name and fully qualified name, and `extra` (`--allow-host`). Listening on
    every interface adds no names: the machine's names are already in."""
    names = set(LOOPBACK_NAMES) | {socket.gethostname(), socket.getfqdn()}
    if bind not in WILDCARDS:
        names.add(bind.strip("[]"))
    names |= {name.strip().strip("[]") for name in extra if name.strip()}
    return {name.lower().rstrip(".") for name in names if name}


def host_allowed(host_header: str, allowed: set[str]) -> bool:
    """Whether a Host header names this viewer. An IP address always does: DNS rebinding
    needs a name the attacker controls, and an address cannot be rebound."""
    if host_header.startswith("["):
        name = host_header[1:].partition("]")[0]
    else:
        name = host_header.rpartition(":")[0] if ":" in host_header else host_header
    name = name.lower().rstrip(".")
    if not name:
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name in allowed
    return True


class SecurityHeaders:
    """Adds the CSP, anti-framing, no-sniff and referrer headers to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for key, value in HEADERS.items():
                    headers[key] = value
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            # answered here, with the headers: Starlette's own 500 is sent from outside
            # every middleware, without them
            log.exception("the viewer failed on %s", scope.get("path"))
            if started:
                raise
            await JSONResponse({"error": "internal error (see the viewer's log)",
                                "status": 500}, status_code=500)(scope, receive,
                                                                 send_with_headers)


class HostGuard:
    """400 for a Host header that is not the viewer's: a page of another site must not reach
    the viewer through DNS rebinding (see `host_allowed`)."""

    def __init__(self, app: ASGIApp, allowed: set[str]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            if from_another_site(headers, scope.get("path", "")):
                response = JSONResponse(
                    {"error": "requests from another site are refused: open the viewer "
                              "itself", "status": 403}, status_code=403)
                await response(scope, receive, send)
                return
            host = headers.get("host", "")
            if not host_allowed(host, self.allowed):
                response = JSONResponse(
                    {"error": f"unexpected Host header {host[:80]!r}: open the viewer by one "
                              "of its names, or start it with --allow-host NAME",
                     "status": 400}, status_code=400)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def from_another_site(headers: Headers, path: str) -> bool:
    """Whether a browser says another site made the request (Fetch Metadata): its pages may
    link to the viewer's page, nothing more — not read, time or set off work through images,
    scripts or forms (probing which threads exist, starting a diagram render per request)."""
    site = headers.get("sec-fetch-site")
    if site not in ("cross-site", "same-site"):
        return False
    return not (path == "/" and headers.get("sec-fetch-mode") == "navigate")


def check_action_request(request: Request, token: str | None) -> None:
    """403 unless the POST comes from the viewer's own page: same origin (Sec-Fetch-Site,
    Origin), the custom header a cross-site form cannot send, and the token if one is set."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise HTTPException(403, f"actions are refused from another site (Sec-Fetch-Site: "
                                 f"{site[:40]})")
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin is not None and origin.lower() != own.lower():
        raise HTTPException(403, f"actions are refused from another origin ({origin[:80]!r}, "
                                 f"this viewer is {own[:80]!r})")
    if request.headers.get("x-statemachine-action") != "1":
        raise HTTPException(403, "actions need the X-Statemachine-Action: 1 header")
    if token is not None and not hmac.compare_digest(
            request.headers.get(TOKEN_HEADER, "").encode(), token.encode()):
        raise HTTPException(403, "actions need the viewer's token: open the URL with "
                                 "?token=... that `statemachine ui` printed at start")
