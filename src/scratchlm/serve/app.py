"""The OpenAI-compatible HTTP server: `create_app(engine, tokenizer, model_name)` → a FastAPI app with
`POST /v1/chat/completions`, `POST /v1/completions` (both also as server-sent events), `GET /v1/models`,
`GET /health`, `GET /metrics` (Prometheus) and the web chat page at `/`.

The app does no generation itself: it turns a request into prompt ids and `SamplingParams`, submits them to
the `LLMEngine` (whose scheduler thread batches every running request together) and relays the engine's
token events. Errors use OpenAI's shape `{"error": {"message", "type", "param", "code"}}`, so clients
show the message. The engine's lifetime (start / shutdown) belongs to whoever made it, not to the app.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any, Sequence

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from scratchlm.serve import protocol as P
from scratchlm.serve.errors import (ERRORS, APIError, BodySizeLimit, EngineStopped, RequestFailed, error_response,
                                    validation_message)
from scratchlm.serve.handlers import Handlers
from scratchlm.serve.metrics import CONTENT_TYPE, ServerMetrics
from scratchlm.serve.protect import TrustedHosts
from scratchlm.serve.rag import StoreUnavailable

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more than any prompt that fits a small model's context
# `stream: true` answers with server-sent events; before OpenAPI 3.2 the schema describes one event.
_SSE = {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"],
    "properties": {"data": {"type": "string", "description": "one JSON chunk, or [DONE] at the end"},
                   "event": {"type": "string"}}}}}


def create_app(engine: Any, tokenizer: Any, model_name: str, api_key: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, rag: Any = None, allowed_hosts: Sequence[str] = (),
               docs: bool = False, reward: Any = None) -> FastAPI:
    """The FastAPI app serving `engine` (already started) as `model_name`; with `api_key`, the /v1 routes,
    /metrics and the schema need `Authorization: Bearer <api_key>`. Requests must name a localhost host or one
    of `allowed_hosts` (`*`: any). `docs` adds the interactive pages /docs and /redoc (their scripts come from a
    CDN, so they are off by default). `reward` (engine/scaling.Scorer, e.g. of `--reward-run`) serves best-of-N
replies (the `scaling` extension)."""
    app = FastAPI(title="scratchlm", version="1", description=f"OpenAI-compatible server of {model_name}",
                  openapi_url=None, docs_url=None, redoc_url=None)  # added below, behind the key
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.add_middleware(TrustedHosts, allowed=allowed_hosts)  # added last: runs first
    metrics = ServerMetrics(engine)
    created = int(time.time())
    server = Handlers(engine, tokenizer, model_name, metrics, rag, reward)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(EngineStopped)
    async def _stopped(request: Request, exc: EngineStopped) -> JSONResponse:
        if isinstance(exc, RequestFailed):  # this request only: the engine goes on serving
            return error_response(500, str(exc), "server_error", code="request_failed")
        return error_response(503, str(exc), "server_error", code="engine_stopped")

    @app.exception_handler(StoreUnavailable)
    async def _store(request: Request, exc: StoreUnavailable) -> JSONResponse:
        return error_response(503, str(exc), "server_error", code="rag_store_unavailable")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, validation_message(exc), code="invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(exc.status_code, str(exc.detail), kind)

    bearer = HTTPBearer(auto_error=False)

    async def authorize(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if api_key is None:
            return
        if creds is None or not secrets.compare_digest(creds.credentials.encode(), api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           "authentication_error", code="invalid_api_key")

    v1 = {"dependencies": [Depends(authorize)], "responses": ERRORS}

    @app.get("/health", response_model=P.Health, tags=["server"], responses={503: ERRORS[503]})
    async def health() -> P.Health:
        """200 while the server and its engine run; 503 once the engine has stopped."""
        if not engine.running_in_background:
            raise EngineStopped("the engine is not running (see the server's log); restart the server")
        return P.Health()

    @app.get("/metrics", tags=["server"], response_class=Response, dependencies=[Depends(authorize)],
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, 401: ERRORS[401]})
    def prometheus() -> Response:  # sync: FastAPI runs it in a worker thread, as engine.stats() takes the lock
        """Prometheus text: engine state, token totals and latency histograms (behind the API key, if any)."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", response_model=P.ModelList, tags=["openai"], **v1)
    async def models() -> P.ModelList:
        """The one model this server serves."""
        return P.ModelList(data=[P.ModelCard(id=model_name, created=created, max_model_len=engine.max_seq_len)])

    @app.post("/v1/chat/completions", response_model=P.ChatCompletion, tags=["openai"],
              **{**v1, "responses": {**ERRORS, 200: {"content": _SSE}}})
    async def chat_completions(req: P.ChatCompletionRequest, request: Request) -> Any:
        """A chat reply; `stream: true` sends it as server-sent events of `chat.completion.chunk`."""
        return await server.chat(req, request)

    @app.post("/v1/completions", response_model=P.Completion, tags=["openai"],
              **{**v1, "responses": {**ERRORS, 200: {"content": _SSE}}})
    async def completions(req: P.CompletionRequest, request: Request) -> Any:
        """A plain-text continuation of `prompt`; `stream: true` sends server-sent events."""
        return await server.complete(req, request)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(authorize)])
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    if docs:
        from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

        @app.get("/docs", include_in_schema=False, dependencies=[Depends(authorize)])
        async def swagger() -> Any:
            return get_swagger_ui_html(openapi_url="/openapi.json", title="scratchlm API")

        @app.get("/redoc", include_in_schema=False, dependencies=[Depends(authorize)])
        async def redoc() -> Any:
            return get_redoc_html(openapi_url="/openapi.json", title="scratchlm API")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.openapi = lambda: _openapi_with_limits(app, engine.max_seq_len, tokenizer.vocab_size)
    app.state.metrics = metrics
    return app


def _openapi_with_limits(app: FastAPI, max_seq_len: int, vocab_size: int) -> dict:
    """FastAPI's schema plus the bounds only the loaded model knows: max_tokens below the context, token ids
    within the vocabulary (so clients and fuzzers see what the server will accept)."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    models = schema["components"]["schemas"]

    def bound(node: Any, lo: int, hi: int) -> None:
        if isinstance(node, dict):
            if node.get("type") == "integer":
                node["minimum"], node["maximum"] = max(lo, node.get("minimum", lo)), hi
            for v in node.values():
                bound(v, lo, hi)
        elif isinstance(node, list):
            for v in node:
                bound(v, lo, hi)

    for name in ("ChatCompletionRequest", "CompletionRequest"):
        props = models[name]["properties"]
        for field in ("max_tokens", "max_completion_tokens"):
            if field in props:
                bound(props[field], 1, max_seq_len - 1)
    bound(models["CompletionRequest"]["properties"]["prompt"], 0, vocab_size - 1)
    app.openapi_schema = schema
    return schema
