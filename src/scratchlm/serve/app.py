"""The OpenAI-compatible HTTP server: `create_app(engine, tokenizer, model_name)` → a FastAPI app with
`POST /v1/chat/completions`, `POST /v1/completions` (both also as server-sent events), `GET /v1/models`,
`GET /health`, `GET /metrics` (Prometheus) and the web chat page at `/`.

The app does no generation itself: it turns a request into prompt ids and `SamplingParams`, submits them to
the `LLMEngine` (whose scheduler thread batches every running request together) and relays the engine's
token events. Errors use OpenAI's shape `{"error": {"message", "type", "param", "code"}}`, so clients
show the message. The engine's lifetime (start / shutdown) belongs to whoever made it, not to the app.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from scratchlm.serve import protocol as P
from scratchlm.serve.metrics import CONTENT_TYPE, ServerMetrics
from scratchlm.serve.prompt import chat_prompt_ids
from scratchlm.serve.reasoning import ThinkSplitter

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more than any prompt that fits a small model's context


class APIError(Exception):
    """An error answered with `status` and OpenAI's error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        """The JSON response of this error."""
        return error_response(self.status, self.message, self.type, self.param, self.code)


class EngineStopped(RuntimeError):
    """The engine's scheduler thread is gone: requests can no longer be answered (503)."""


def error_response(status: int, message: str, type: str = "invalid_request_error",
                   param: str | None = None, code: str | None = None) -> JSONResponse:
    """OpenAI's error body with an HTTP status."""
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


_ERRORS = {status: {"model": P.ErrorResponse, "description": what} for status, what in (
    (400, "malformed JSON or fields, a prompt longer than the context"),
    (401, "missing or wrong API key (only when the server has one)"),
    (404, "no such model"),
    (413, "request body over the size limit"),
    (429, "the engine's waiting queue is full: retry later"),
    (503, "the engine has stopped"),
)}
# `stream: true` answers with server-sent events; before OpenAPI 3.2 the schema describes one event.
_SSE = {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"],
    "properties": {"data": {"type": "string", "description": "one JSON chunk, or [DONE] at the end"},
                   "event": {"type": "string"}}}}}


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


def _validation_message(exc: RequestValidationError) -> str:
    """One readable line from FastAPI's validation errors: `field.path: what is wrong; ...`."""
    parts = []
    for err in exc.errors()[:5]:
        if err.get("type") == "json_invalid":
            return f"request body is not valid JSON: {err.get('ctx', {}).get('error', err.get('msg'))}"
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request"


def create_app(engine: Any, tokenizer: Any, model_name: str, api_key: str | None = None,
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI app serving `engine` (already started) as `model_name`; with `api_key`, the /v1 routes
    need `Authorization: Bearer <api_key>`."""
    app = FastAPI(title="scratchlm", version="1", description=f"OpenAI-compatible server of {model_name}")
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    metrics = ServerMetrics(engine)
    created = int(time.time())
    server = _Server(engine, tokenizer, model_name, metrics)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(EngineStopped)
    async def _stopped(request: Request, exc: EngineStopped) -> JSONResponse:
        return error_response(503, str(exc), "server_error", code="engine_stopped")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(400, _validation_message(exc), code="invalid_request")

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

    v1 = {"dependencies": [Depends(authorize)], "responses": _ERRORS}

    @app.get("/health", response_model=P.Health, tags=["server"], responses={503: _ERRORS[503]})
    async def health() -> P.Health:
        """200 while the server and its engine run; 503 once the engine has stopped."""
        if not engine.running_in_background:
            raise EngineStopped("the engine is not running (see the server's log); restart the server")
        return P.Health()

    @app.get("/metrics", tags=["server"], response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    def prometheus() -> Response:  # sync: FastAPI runs it in a worker thread, as engine.stats() takes the lock
        """Prometheus text: engine state, token totals and latency histograms."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models", response_model=P.ModelList, tags=["openai"], **v1)
    async def models() -> P.ModelList:
        """The one model this server serves."""
        return P.ModelList(data=[P.ModelCard(id=model_name, created=created, max_model_len=engine.max_seq_len)])

    @app.post("/v1/chat/completions", response_model=P.ChatCompletion, tags=["openai"],
              **{**v1, "responses": {**_ERRORS, 200: {"content": _SSE}}})
    async def chat_completions(req: P.ChatCompletionRequest, request: Request) -> Any:
        """A chat reply; `stream: true` sends it as server-sent events of `chat.completion.chunk`."""
        return await server.chat(req, request)

    @app.post("/v1/completions", response_model=P.Completion, tags=["openai"],
              **{**v1, "responses": {**_ERRORS, 200: {"content": _SSE}}})
    async def completions(req: P.CompletionRequest, request: Request) -> Any:
        """A plain-text continuation of `prompt`; `stream: true` sends server-sent events."""
        return await server.complete(req, request)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.openapi = lambda: _openapi_with_limits(app, engine.max_seq_len, tokenizer.vocab_size)
    app.state.metrics = metrics
    return app


class _EventStream(StreamingResponse):
    """Server-sent events whose generator is closed as soon as sending stops (the client went away), so
    the request's samples are cancelled then rather than whenever the generator is garbage-collected."""

    def __init__(self, content: AsyncIterator[str]):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def stream_response(self, send: Any) -> None:
        events = self.body_iterator
        self.body_iterator = _guarded(events)
        try:
            await super().stream_response(send)
        finally:
            await events.aclose()


async def _guarded(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """The events, ending in an error event if the engine dies mid-stream (the status is already sent)."""
    try:
        async for event in events:
            yield event
    except EngineStopped as e:
        yield _sse({"error": {"message": str(e), "type": "server_error", "param": None, "code": "engine_stopped"}})


def _sse(data: Any) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


class _Timer:
    """Observes one sample's time to first token and time per output token."""

    def __init__(self, metrics: ServerMetrics, t0: float):
        self.metrics, self.t0, self.last = metrics, t0, None

    def token(self) -> None:
        now = time.perf_counter()
        if self.last is None:
            self.metrics.ttft.observe(now - self.t0)
        else:
            self.metrics.tpot.observe(now - self.last)
        self.last = now


class _Server:
    """The request handling behind the routes (kept apart from create_app so each step has a name)."""

    def __init__(self, engine: Any, tokenizer: Any, model_name: str, metrics: ServerMetrics):
        self.engine, self.tokenizer, self.model_name, self.metrics = engine, tokenizer, model_name, metrics

    # --- shared steps ----------------------------------------------------------------------------

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(404, f"model {model!r} is not served here; this server serves {self.model_name!r}",
                           "not_found_error", "model", "model_not_found")

    def _params(self, req: P._Sampling, prompt_len: int, max_tokens: int | None) -> Any:
        """SamplingParams of a request whose prompt has `prompt_len` tokens; 400 when they cannot fit."""
        from scratchlm.generate import SamplingParams

        limit = self.engine.max_seq_len
        if prompt_len >= limit:
            raise APIError(400, f"the prompt has {prompt_len} tokens, but this model's maximum context length is "
                           f"{limit} tokens (prompt + completion)", param="messages", code="context_length_exceeded")
        if max_tokens is not None and prompt_len + max_tokens > limit:
            raise APIError(400, f"this model's maximum context length is {limit} tokens, but {prompt_len + max_tokens} "
                           f"were requested ({prompt_len} in the prompt, {max_tokens} in the completion); "
                           f"lower max_tokens or the prompt", param="max_tokens", code="context_length_exceeded")
        stops = req.stop_list()
        if len(stops) > P.MAX_STOP:
            raise APIError(400, f"stop has {len(stops)} strings; at most {P.MAX_STOP}", param="stop")
        return SamplingParams(
            temperature=1.0 if req.temperature is None else (0.0 if req.temperature < P.GREEDY_BELOW else req.temperature),
            # A top_p that rounds to 0 in float32 would filter out every token; the top one must stay.
            top_p=1.0 if req.top_p is None else max(req.top_p, P.MIN_TOP_P),
            top_k=req.top_k or 0,
            repetition_penalty=req.repetition_penalty or 1.0,
            max_new_tokens=max_tokens if max_tokens is not None else limit - prompt_len,
            stop_ids=list(self.tokenizer.stop_ids),
            stop_strings=stops,
            seed=req.seed,
        )

    async def _submit(self, ids: list[int], params: Any, n: int, logprobs: bool, top_logprobs: int) -> Any:
        """The engine's handle of a new request; its errors as API errors. Submitting waits for the engine's
        lock, which a scheduler step holds for a whole forward: done in a worker thread, so the event loop
        keeps streaming other requests' tokens meanwhile."""
        from scratchlm.engine import EngineFull, PromptTooLong

        if not self.engine.running_in_background:
            raise APIError(503, "the engine is not running (see the server's log); restart the server",
                           "server_error", code="engine_stopped")
        try:
            return await asyncio.to_thread(self.engine.submit, ids, params, n=n, logprobs=logprobs,
                                           top_logprobs=top_logprobs)
        except PromptTooLong as e:
            raise APIError(400, str(e), param="messages", code="context_length_exceeded") from e
        except ValueError as e:  # what the engine refuses (n over its max_num_seqs, ...) is the request's fault
            raise APIError(400, str(e), code="invalid_request") from e
        except EngineFull as e:
            raise APIError(429, f"the server is busy ({e}); retry later", "rate_limit_error", code="queue_full") from e

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _logprob_entry(self, ev: Any) -> P.TokenLogprob:
        text = self._token_text(ev.token_id)
        tops = [P.TopLogprob(token=(t := self._token_text(i)), logprob=lp, bytes=list(t.encode()))
                for i, lp in (ev.top_logprobs or [])]
        return P.TokenLogprob(token=text, logprob=ev.logprob, bytes=list(text.encode()), top_logprobs=tops)

    async def _events(self, handles: list[Any], request: Request, t0: float) -> AsyncIterator[tuple[int, Any]]:
        """(handle number, TokenEvent) from all handles as they come; cancels every unfinished handle when
        the consumer stops early (the client went away), so their KV blocks return to the pool at once."""
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        async def pump(k: int, h: Any) -> None:
            try:
                async for ev in h.aiter():
                    await queue.put((k, ev))
            finally:
                await queue.put((k, done))

        tasks = [asyncio.create_task(pump(k, h)) for k, h in enumerate(handles)]
        timers: dict[tuple[int, int], _Timer] = {}
        open_handles = set(range(len(handles)))
        try:
            while open_handles:
                try:
                    k, ev = await asyncio.wait_for(queue.get(), timeout=1.0)
                except asyncio.TimeoutError:
                    if not self.engine.running_in_background:  # its thread died: nothing more will come
                        raise EngineStopped("the engine stopped (see the server's log); restart the server")
                    continue
                if ev is done:
                    open_handles.discard(k)
                    continue
                if ev.token_id is not None:
                    timers.setdefault((k, ev.index), _Timer(self.metrics, t0)).token()
                if ev.finish_reason is not None:
                    self.metrics.finished.labels(ev.finish_reason).inc()
                yield k, ev
            self.metrics.e2e.observe(time.perf_counter() - t0)
        finally:
            for k in open_handles:  # stopped early: the client is gone, free what its samples hold
                handles[k].cancel()
                self.metrics.cancelled.inc()
            for t in tasks:
                t.cancel()

    async def _watch_disconnect(self, request: Request, handles: list[Any]) -> None:
        """Cancel the request's samples when its client disconnects."""
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                for h in handles:
                    h.cancel()
                return

    async def _collect(self, handles: list[Any], request: Request, t0: float) -> AsyncIterator[tuple[int, Any]]:
        """`_events` while a watcher cancels the handles the moment the client disconnects (a stream would
        otherwise notice only at its next send, and a non-streamed answer never)."""
        watcher = asyncio.create_task(self._watch_disconnect(request, handles))
        try:
            async for item in self._events(handles, request, t0):
                yield item
        finally:
            watcher.cancel()

    # --- chat ------------------------------------------------------------------------------------

    async def chat(self, req: P.ChatCompletionRequest, request: Request) -> Any:
        """Handle POST /v1/chat/completions."""
        t0 = time.perf_counter()
        self._check_model(req.model)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
        thinking = req.chat_template_kwargs.enable_thinking if req.chat_template_kwargs else True
        ids = chat_prompt_ids(self.tokenizer, messages, enable_thinking=thinking)
        params = self._params(req, len(ids), req.max_completion_tokens or req.max_tokens)
        handle = await self._submit(ids, params, req.n, req.logprobs, req.top_logprobs or 0)
        rid, created = f"chatcmpl-{handle.request_id}", int(time.time())
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return _EventStream(self._chat_stream(handle, req, request, rid, created, usage, t0))
        n = req.n
        splitters = [ThinkSplitter() for _ in range(n)]
        reasoning, content = [""] * n, [""] * n
        finish: list[str | None] = [None] * n
        lps: list[list[P.TokenLogprob]] = [[] for _ in range(n)]
        completion_tokens = 0
        async for _, ev in self._collect([handle], request, t0):
            i = ev.index
            r, c = splitters[i].feed(ev.text)
            if ev.finish_reason is not None:
                r2, c2 = splitters[i].finish()
                r, c, finish[i] = r + r2, c + c2, ev.finish_reason
            reasoning[i] += r
            content[i] += c
            if ev.token_id is not None:
                completion_tokens += 1
                if req.logprobs and ev.logprob is not None:
                    lps[i].append(self._logprob_entry(ev))
        choices = []
        for i in range(n):
            think = reasoning[i] if splitters[i].opened else None
            message = P.AssistantMessage(content=content[i], reasoning_content=think, reasoning=think)
            choices.append(P.ChatChoice(index=i, message=message, finish_reason=finish[i],
                                        logprobs=P.ChoiceLogprobs(content=lps[i]) if req.logprobs else None))
        usage = P.Usage(prompt_tokens=handle.prompt_tokens, completion_tokens=completion_tokens,
                        total_tokens=handle.prompt_tokens + completion_tokens)
        return P.ChatCompletion(id=rid, created=created, model=self.model_name, choices=choices, usage=usage)

    async def _chat_stream(self, handle: Any, req: P.ChatCompletionRequest, request: Request, rid: str,
                           created: int, include_usage: bool, t0: float) -> AsyncIterator[str]:
        base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.model_name}

        def chunk(i: int, delta: dict, finish: str | None = None, logprobs: Any = None) -> str:
            choice = {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return _sse({**base, "choices": [choice], **({"usage": None} if include_usage else {})})

        for i in range(req.n):  # the first chunk of each choice carries the role, as OpenAI's does
            yield chunk(i, {"role": "assistant", "content": ""})
        splitters = [ThinkSplitter() for _ in range(req.n)]
        completion_tokens = 0
        async for _, ev in self._collect([handle], request, t0):
            i = ev.index
            r, c = splitters[i].feed(ev.text)
            if ev.finish_reason is not None:
                r2, c2 = splitters[i].finish()
                r, c = r + r2, c + c2
            lp = None
            if ev.token_id is not None:
                completion_tokens += 1
                if req.logprobs and ev.logprob is not None:
                    lp = {"content": [self._logprob_entry(ev).model_dump()]}
            if r or c or lp or ev.finish_reason:
                delta = _drop_none({"reasoning_content": r or None, "reasoning": r or None, "content": c or None})
                yield chunk(i, delta, ev.finish_reason, lp)
        if include_usage:
            usage = {"prompt_tokens": handle.prompt_tokens, "completion_tokens": completion_tokens,
                     "total_tokens": handle.prompt_tokens + completion_tokens}
            yield _sse({**base, "choices": [], "usage": usage})
        yield "data: [DONE]\n\n"

    # --- completions -----------------------------------------------------------------------------

    def _prompts(self, prompt: Any) -> list[list[int]]:
        """The request's prompt(s) as token id lists."""
        from scratchlm.data.clean import clean_text

        if isinstance(prompt, str):
            prompt = [prompt]
        if prompt and all(isinstance(x, int) for x in prompt):
            prompt = [prompt]
        if not prompt:
            raise APIError(400, "prompt is empty", param="prompt")
        if len(prompt) > P.MAX_N:
            raise APIError(400, f"prompt holds {len(prompt)} prompts; at most {P.MAX_N} in one request", param="prompt")
        vocab = self.tokenizer.vocab_size
        out = []
        for k, p in enumerate(prompt):
            ids = self.tokenizer.encode(clean_text(p)) if isinstance(p, str) else list(p)
            if not ids:
                raise APIError(400, f"prompt {k} is empty (no tokens)", param="prompt")
            bad = [i for i in ids if not 0 <= i < vocab]
            if bad:
                raise APIError(400, f"prompt {k} has token id {bad[0]} outside the vocabulary [0, {vocab})",
                               param="prompt")
            out.append(ids)
        return out

    async def complete(self, req: P.CompletionRequest, request: Request) -> Any:
        """Handle POST /v1/completions."""
        t0 = time.perf_counter()
        self._check_model(req.model)
        prompts = self._prompts(req.prompt)
        if len(prompts) * req.n > P.MAX_N:
            raise APIError(400, f"{len(prompts)} prompts × n={req.n} samples is over {P.MAX_N}", param="n")
        params = [self._params(req, len(ids), req.max_tokens) for ids in prompts]
        handles = []
        try:
            for ids, sp in zip(prompts, params):
                handles.append(await self._submit(ids, sp, req.n, req.logprobs is not None, req.logprobs or 0))
        except APIError:
            for h in handles:
                h.cancel()
            raise
        rid, created = f"cmpl-{handles[0].request_id}", int(time.time())
        echo = [self.tokenizer.decode(ids) if req.echo else "" for ids in prompts]
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return _EventStream(self._complete_stream(handles, req, request, rid, created, echo, usage, t0))
        n = req.n
        texts = [echo[j // n] for j in range(len(handles) * n)]
        finish: list[str | None] = [None] * len(texts)
        lps = [P.CompletionLogprobs() for _ in texts]
        completion_tokens = 0
        async for k, ev in self._collect(handles, request, t0):
            j = k * n + ev.index
            if ev.token_id is not None:
                completion_tokens += 1
                if req.logprobs is not None and ev.logprob is not None:
                    self._add_completion_logprob(lps[j], ev, len(texts[j]))
            texts[j] += ev.text
            if ev.finish_reason is not None:
                finish[j] = ev.finish_reason
        choices = [P.CompletionChoice(index=j, text=t, finish_reason=finish[j],
                                      logprobs=lps[j] if req.logprobs is not None else None)
                   for j, t in enumerate(texts)]
        prompt_tokens = sum(h.prompt_tokens for h in handles)
        usage = P.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                        total_tokens=prompt_tokens + completion_tokens)
        return P.Completion(id=rid, created=created, model=self.model_name, choices=choices, usage=usage)

    def _add_completion_logprob(self, lp: P.CompletionLogprobs, ev: Any, offset: int) -> None:
        lp.tokens.append(self._token_text(ev.token_id))
        lp.token_logprobs.append(ev.logprob)
        lp.top_logprobs.append({self._token_text(i): v for i, v in (ev.top_logprobs or [])} or None)
        lp.text_offset.append(offset)

    async def _complete_stream(self, handles: list[Any], req: P.CompletionRequest, request: Request, rid: str,
                               created: int, echo: list[str], include_usage: bool, t0: float) -> AsyncIterator[str]:
        base = {"id": rid, "object": "text_completion", "created": created, "model": self.model_name}
        n = req.n
        extra = {"usage": None} if include_usage else {}
        offsets = [len(echo[j // n]) for j in range(len(handles) * n)]
        for j in range(len(offsets)):
            if echo[j // n]:
                text = echo[j // n]
                yield _sse({**base, "choices": [{"index": j, "text": text, "logprobs": None, "finish_reason": None}],
                            **extra})
        completion_tokens = 0
        async for k, ev in self._collect(handles, request, t0):
            j = k * n + ev.index
            lp = None
            if ev.token_id is not None:
                completion_tokens += 1
                if req.logprobs is not None and ev.logprob is not None:
                    one = P.CompletionLogprobs()
                    self._add_completion_logprob(one, ev, offsets[j])
                    lp = one.model_dump()
            offsets[j] += len(ev.text)
            if ev.text or lp or ev.finish_reason:
                choice = {"index": j, "text": ev.text, "logprobs": lp, "finish_reason": ev.finish_reason}
                yield _sse({**base, "choices": [choice], **extra})
        if include_usage:
            prompt_tokens = sum(h.prompt_tokens for h in handles)
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                     "total_tokens": prompt_tokens + completion_tokens}
            yield _sse({**base, "choices": [], "usage": usage})
        yield "data: [DONE]\n\n"
