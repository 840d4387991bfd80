"""The request handling behind the routes of app.py: a request becomes prompt ids and `SamplingParams`, is
submitted to the engine, and the engine's token events are relayed as one response or as server-sent events."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from scratchlm.serve import protocol as P
from scratchlm.serve.errors import APIError, EngineStopped, RequestFailed
from scratchlm.serve.metrics import ServerMetrics
from scratchlm.serve.prompt import chat_prompt_ids
from scratchlm.serve.tools import (NAME_OPEN, MAX_NAME_TOKENS, ReplyParser, ToolPlan, delta_tool_calls, finish_reason,
                                   forced_prefill, plan_tools, request_messages, snap_name)
from scratchlm.serve.validate import check_chat, check_completion, max_text_chars


class EventStream(StreamingResponse):
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
        code = "request_failed" if isinstance(e, RequestFailed) else "engine_stopped"
        yield _sse({"error": {"message": str(e), "type": "server_error", "param": None, "code": code}})


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


class Handlers:
    """What each route does, step by step: create_app keeps only the routing."""

    def __init__(self, engine: Any, tokenizer: Any, model_name: str, metrics: ServerMetrics, rag: Any = None,
                 reward: Any = None):
        self.engine, self.tokenizer, self.model_name, self.metrics = engine, tokenizer, model_name, metrics
        self.rag = rag  # serve/rag.RagContext with --rag-db: chat questions are answered from retrieved chunks
        self.reward = reward  # engine/scaling.Scorer of --reward-run: picks best-of-N replies (`scaling`)
        self.max_chars = max_text_chars(tokenizer, engine.max_seq_len)  # checked before any tokenising

    # --- shared steps ----------------------------------------------------------------------------

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(404, f"model {model!r} is not served here; this server serves {self.model_name!r}",
                           "not_found_error", "model", "model_not_found")

    def _params(self, req: P._Sampling, prompt_len: int, max_tokens: int | None) -> Any:
        """SamplingParams of a request whose prompt has `prompt_len` tokens; 400 when they cannot fit."""
        from scratchlm.engine.sampling import SamplingParams

        limit = self.engine.max_seq_len
        if prompt_len >= limit:
            raise APIError(400, f"the prompt has {prompt_len} tokens, but this model's maximum context length is "
                           f"{limit} tokens (prompt + completion)", param="messages", code="context_length_exceeded")
        if max_tokens is not None and prompt_len + max_tokens > limit:
            raise APIError(400, f"this model's maximum context length is {limit} tokens, but {prompt_len + max_tokens} "
                           f"were requested ({prompt_len} in the prompt, {max_tokens} in the completion); "
                           f"lower max_tokens or the prompt", param="max_tokens", code="context_length_exceeded")
        stops = req.stop_list()
        return SamplingParams(
            temperature=1.0 if req.temperature is None else (0.0 if req.temperature < P.GREEDY_BELOW else req.temperature),
            # A top_p that rounds to 0 in float32 would filter out every token; the top one must stay.
            top_p=1.0 if req.top_p is None else max(req.top_p, P.MIN_TOP_P),
            top_k=req.top_k or 0,
            repetition_penalty=req.repetition_penalty or 1.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            presence_penalty=req.presence_penalty or 0.0,
            min_p=req.min_p or 0.0,
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
            raise APIError(429, f"the server is busy ({e}); retry later", "rate_limit_error", code="queue_full",
                           headers={"Retry-After": "1"}) from e

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
                if getattr(ev, "error", None):
                    raise RequestFailed(f"the engine failed on this request: {ev.error}")
                yield k, ev
            self.metrics.e2e.observe(time.perf_counter() - t0)
        finally:
            # Stopped early: the client is gone, free what its samples hold.
            self._cancel([handles[k] for k in open_handles])
            for t in tasks:
                t.cancel()

    def _cancel(self, handles: list[Any]) -> None:
        """Cancel the handles still running, each counted once in requests_cancelled_total (a disconnect can be
        seen both by the watcher and by the stream that stops)."""
        for h in handles:
            if not h.finished and not h.cancelled:
                h.cancel()
                self.metrics.cancelled.inc()

    async def _watch_disconnect(self, request: Request, handles: list[Any]) -> None:
        """Cancel the request's samples when its client disconnects."""
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                self._cancel(handles)
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
        check_chat(req, self.max_chars)
        self._check_model(req.model)
        if req.scaling is not None:
            self._check_scaling(req)
        messages = request_messages(req)
        plan = plan_tools(req)
        thinking = req.chat_template_kwargs.enable_thinking if req.chat_template_kwargs else True
        sources = None
        if self.rag is not None:
            room = self.engine.max_seq_len - (req.max_completion_tokens or req.max_tokens or self.engine.max_seq_len // 4)

            def fits(msgs: list[dict]) -> bool:
                return len(chat_prompt_ids(self.tokenizer, msgs, enable_thinking=thinking, tools=plan.tools)) <= room

            # Retrieval (embedding, sqlite) off the event loop, like submitting.
            messages, sources = await asyncio.to_thread(self.rag.augment, messages, fits)
        if plan.choose:  # `required` with several tools: the model names one first
            plan.forced = await self._choose_tool(req, request, messages, plan, thinking, t0)
        prefill = forced_prefill(plan)
        # Tokenising is CPU work too: in a worker thread, so /health and other streams are not held up.
        ids = await asyncio.to_thread(chat_prompt_ids, self.tokenizer, messages, enable_thinking=thinking,
                                      tools=plan.tools, prefill=prefill)
        params = self._params(req, len(ids), req.max_completion_tokens or req.max_tokens)
        n = req.scaling.samples if req.scaling is not None else req.n  # scaling: n is 1, one of the samples returned
        handle = await self._submit(ids, params, n, req.logprobs, req.top_logprobs or 0)
        rid, created = f"chatcmpl-{handle.request_id}", int(time.time())
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return EventStream(self._chat_stream(handle, req, request, rid, created, usage, t0, sources, plan, prefill))
        parsers = [ReplyParser(plan, prefill) for _ in range(n)]
        finish: list[str | None] = [None] * n
        lps: list[list[P.TokenLogprob]] = [[] for _ in range(n)]
        raw = [prefill] * n  # what each sample wrote, reasoning included: what a vote reads and a reward model scores
        completion_tokens = 0
        async for _, ev in self._collect([handle], request, t0):
            i = ev.index
            raw[i] += ev.text
            parsers[i].feed(ev.text, ev.finish_reason is not None)
            if ev.finish_reason is not None:
                finish[i] = ev.finish_reason
            if ev.token_id is not None:
                completion_tokens += 1
                if req.logprobs and ev.logprob is not None:
                    lps[i].append(self._logprob_entry(ev))
        picked = None
        if req.scaling is not None:
            picked = await self._pick(req.scaling, messages, raw)
            keep = picked["picked"]
            parsers, finish, lps = [parsers[keep]], [finish[keep]], [lps[keep]]
        choices = []
        for i, p in enumerate(parsers):
            think = p.reasoning if p.think is not None and p.think.opened else None
            calls = p.tool_calls()
            message = P.AssistantMessage(content=p.content or (None if calls else ""), reasoning_content=think,
                                         reasoning=think, tool_calls=calls or None)
            choices.append(P.ChatChoice(index=i, message=message, finish_reason=finish_reason(finish[i], bool(calls)),
                                        logprobs=P.ChoiceLogprobs(content=lps[i]) if req.logprobs else None))
        usage = P.Usage(prompt_tokens=handle.prompt_tokens, completion_tokens=completion_tokens,
                        total_tokens=handle.prompt_tokens + completion_tokens)
        return P.ChatCompletion(id=rid, created=created, model=self.model_name, choices=choices, usage=usage,
                                sources=sources, scaling=picked)

    def _check_scaling(self, req: P.ChatCompletionRequest) -> None:
        """400 naming the field when `scaling` cannot be served as asked (before anything is tokenised)."""
        from scratchlm.data.answers import ANSWER_KINDS, can_check

        sc = req.scaling
        limit = min(P.MAX_N, self.engine.max_num_seqs)
        if sc.samples > limit:
            raise APIError(400, f"scaling.samples={sc.samples} is over this server's limit of {limit} samples per "
                           f"request (--max-num-seqs {self.engine.max_num_seqs}, at most {P.MAX_N})",
                           param="scaling.samples")
        if req.n != 1:
            raise APIError(400, f"n={req.n} with scaling: n must be 1 (scaling.samples={sc.samples} replies are "
                           "sampled and the picked one is returned)", param="n")
        if req.stream:
            raise APIError(400, "stream: true with scaling: the pick needs every sample whole; send stream: false",
                           param="stream")
        if sc.method == "best_of" and self.reward is None:
            raise APIError(400, "scaling.method='best_of' needs a reward model, and this server has none: start it "
                           "with --reward-run REWARD_RUN (or use method 'self_consistency')", param="scaling.method")
        if sc.method == "self_consistency" and sc.answer not in ANSWER_KINDS and not can_check(sc.answer):
            raise APIError(400, f"scaling.answer={sc.answer[:40]!r} is not a way to read an answer: choose "
                           f"{', '.join(ANSWER_KINDS)} or a synth task name (add2, author, next_line, identity, ...)",
                           param="scaling.answer")

    async def _pick(self, sc: P.Scaling, messages: list[dict], texts: list[str]) -> dict:
        """The `scaling` field of the response: which sample was picked (engine/scaling.py), how, and every sample."""
        from scratchlm.engine.scaling import best_of, self_consistency

        if sc.method == "best_of":  # a reward-model forward: off the event loop
            pick = await asyncio.to_thread(best_of, messages, texts, self.reward)
        else:
            pick = self_consistency(texts, sc.answer)
        return {**pick.to_dict(), "samples": sc.samples, "candidates": texts}

    async def _choose_tool(self, req: P.ChatCompletionRequest, request: Request, messages: list[dict],
                           plan: ToolPlan, thinking: bool, t0: float) -> str:
        """`tool_choice: required` with several tools: the model writes a name after the call's opening (greedy,
        a few tokens), snapped to the closest listed name, so the reply that follows is always a listed call."""
        from scratchlm.engine.sampling import SamplingParams

        ids = await asyncio.to_thread(chat_prompt_ids, self.tokenizer, messages, enable_thinking=thinking,
                                      tools=plan.tools, prefill=NAME_OPEN)
        self._params(req, len(ids), None)  # the same context checks as the reply's
        room = self.engine.max_seq_len - len(ids)
        params = SamplingParams(temperature=0.0, max_new_tokens=max(1, min(MAX_NAME_TOKENS, room)),
                                stop_ids=list(self.tokenizer.stop_ids), stop_strings=['"'])
        handle = await self._submit(ids, params, 1, False, 0)
        written = ""
        async for _, ev in self._collect([handle], request, t0):
            written += ev.text
        return snap_name(written, plan.names)

    async def _chat_stream(self, handle: Any, req: P.ChatCompletionRequest, request: Request, rid: str,
                           created: int, include_usage: bool, t0: float,
                           sources: list[str] | None = None, plan: ToolPlan | None = None,
                           prefill: str = "") -> AsyncIterator[str]:
        base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.model_name}

        def chunk(i: int, delta: dict, finish: str | None = None, logprobs: Any = None, extra: dict | None = None) -> str:
            choice = {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return _sse({**base, "choices": [choice], **({"usage": None} if include_usage else {}), **(extra or {})})

        for i in range(req.n):  # the first chunk of each choice carries the role, as OpenAI's does
            yield chunk(i, {"role": "assistant", "content": ""},
                        extra={"sources": sources} if sources is not None and i == 0 else None)
        parsers = [ReplyParser(plan or ToolPlan(), prefill) for _ in range(req.n)]
        completion_tokens = 0
        async for _, ev in self._collect([handle], request, t0):
            i = ev.index
            r, c, calls = parsers[i].feed(ev.text, ev.finish_reason is not None)
            lp = None
            if ev.token_id is not None:
                completion_tokens += 1
                if req.logprobs and ev.logprob is not None:
                    lp = {"content": [self._logprob_entry(ev).model_dump()]}
            if r or c or calls or lp or ev.finish_reason:
                delta = _drop_none({"reasoning_content": r or None, "reasoning": r or None, "content": c or None,
                                    "tool_calls": delta_tool_calls(calls) or None})
                yield chunk(i, delta, finish_reason(ev.finish_reason, parsers[i].has_calls), lp)
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
        check_completion(req, self.max_chars)
        self._check_model(req.model)
        if (req.model_extra or {}).get("scaling") is not None:
            raise APIError(400, "scaling (self-consistency, best-of-N) is served on /v1/chat/completions only",
                           param="scaling")
        prompts = await asyncio.to_thread(self._prompts, req.prompt)
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
        echo = [self.tokenizer.decode(ids) if req.echo else "" for ids in prompts]  # what was sent: cheap
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            return EventStream(self._complete_stream(handles, req, request, rid, created, echo, usage, t0))
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
