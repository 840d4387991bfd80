"""Errors in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`) and the request-size limit: what the
server answers when a request cannot be served, whatever the reason."""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from scratchlm.serve import protocol as P


class APIError(Exception):
    """An error answered with `status` and OpenAI's error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        """The JSON response of this error."""
        return error_response(self.status, self.message, self.type, self.param, self.code, self.headers)


class EngineStopped(RuntimeError):
    """The engine's scheduler thread is gone: requests can no longer be answered (503)."""


class RequestFailed(EngineStopped):
    """The engine failed on this request (its forward or sampling raised) and aborted it; the engine serves on."""


def error_response(status: int, message: str, type: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """OpenAI's error body with an HTTP status (429 and 503 say when to retry: `Retry-After`)."""
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    if status in (429, 503):
        headers = {"Retry-After": "1", **(headers or {})}
    return JSONResponse(body, status_code=status, headers=headers)


ERRORS = {status: {"model": P.ErrorResponse, "description": what} for status, what in (
    (400, "malformed JSON or fields, a prompt longer than the context"),
    (401, "missing or wrong API key (only when the server has one)"),
    (404, "no such model"),
    (413, "request body over the size limit"),
    (429, "the engine's waiting queue is full: retry later"),
    (503, "the engine has stopped"),
)}


class BodySizeLimit:
    """ASGI middleware: a body over `max_bytes` gets 413 before the app parses it. A declared length is
    checked at once; a chunked upload (no length) is read up to the limit first, then replayed to the app."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = error_response(413, f"request body is over the server's limit of {self.max_bytes} bytes",
                                 code="body_too_large")
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.max_bytes:
                return await too_big(scope, receive, send)
            return await self.app(scope, receive, send)  # the server holds the client to its declared length
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await too_big(scope, receive, send)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


def validation_message(exc: RequestValidationError) -> str:
    """One readable line from FastAPI's validation errors: `field.path: what is wrong; ...`."""
    parts = []
    for err in exc.errors()[:5]:
        if err.get("type") == "json_invalid":
            return f"request body is not valid JSON: {err.get('ctx', {}).get('error', err.get('msg'))}"
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request"
