"""The Host-header check against DNS rebinding: a web page on evil.example whose name is rebound to 127.0.0.1
could otherwise drive a server on the loopback without a key; its requests still carry `Host: evil.example`."""

from __future__ import annotations

from typing import Any, Iterable

from scratchlm.serve.errors import error_response

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def host_name(header: str) -> str:
    """The name in a Host header, without its port (`[::1]:8000` → `::1`), lower-cased."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class TrustedHosts:
    """ASGI middleware: a request whose Host is not a localhost name nor one of `allowed` gets 400 (OpenAI's
    error shape). `*` in `allowed` turns the check off; a request without a Host header (HTTP/1.0, not a
    browser) passes."""

    def __init__(self, app: Any, allowed: Iterable[str] = ()):
        self.app = app
        self.allowed = {h.lower() for h in (*LOCAL_HOSTS, *allowed)}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or "*" in self.allowed:
            return await self.app(scope, receive, send)
        raw = dict(scope.get("headers") or []).get(b"host")
        if raw is not None:
            name = host_name(raw.decode("latin-1"))
            if name not in self.allowed and not name.endswith(".localhost"):
                return await error_response(
                    400, f"Host {name!r} is not allowed: this server answers localhost names only; start it with "
                    f"`--allowed-host {name}` to serve that name", code="host_not_allowed")(scope, receive, send)
        await self.app(scope, receive, send)
