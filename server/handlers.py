"""Chat and text completions: request → admission → prompt tokens → adapter → engine → response.

No web framework here: the app passes a validated request and a disconnect probe, and gets back
a `Served`: either a response dict or an async iterator of server-sent-event lines, with the
digest of the adapter that produced it (provenance).

Admission comes first, then the work a request costs the server: chat templating and
tokenization run off the event loop, in a worker thread, while the request holds its admission
slot, so 429 backpressure bounds that work and a 4 MB prompt never stalls other streams. Prompt
characters are bounded before admission (`--max-prompt-chars`), which costs only a count.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

from loramux.server.admission import Admission
from loramux.server.auth import Principal
from loramux.server.engines.base import Delta, Engine, GenerationRequest, Sampling
from loramux.server.errors import InvalidRequest, ServerError, blames_client, to_server_error
from loramux.server.gateway_metrics import Ticket
from loramux.server.metrics import NO_VERSION, Metrics
from loramux.server.model_defaults import OPENAI_DEFAULTS, ModelDefaults, unapplied
from loramux.server.models import ServingModels
from loramux.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    new_id,
    now,
)

log = logging.getLogger(__name__)
Disconnected = Callable[[], Awaitable[bool]]
T = TypeVar("T")
# `x-loramux-adapter-digest` of a response the base model produced (no adapter).
BASE_DIGEST = "base"
DEFAULT_MAX_PROMPT_CHARS = 1_000_000


@dataclass(frozen=True)
class Served:
    """What a completion endpoint returns: the body, and which weights produce it."""

    body: dict[str, Any] | AsyncIterator[str]
    digest: str  # the adapter's manifest digest, or BASE_DIGEST
    ref: str  # the adapter version `name@N` that `model` resolved to, or the served base name


@dataclass
class _Job:
    """One admitted request, ready for the engine."""

    request: GenerationRequest
    model: str
    label: str
    prompt_tokens: int
    endpoint: str
    ticket: Ticket
    version: str  # the metrics' version label
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    completion_tokens: int = 0


async def off_loop(work: Callable[[], T]) -> T:
    """`work()` in a worker thread. If the caller is cancelled, it still waits for the thread,
    so whatever the caller holds (its admission slot) bounds the thread's work too."""
    task = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: nobody is left to see it
        raise


class Handlers:
    """The completion endpoints; what `model` names comes from `ServingModels`, nowhere else."""

    def __init__(self, engine: Engine, tokenizer, models: ServingModels, metrics: Metrics,
                 admission: Admission, max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
                 defaults: ModelDefaults | None = None) -> None:
        self.engine = engine
        self.defaults = defaults or ModelDefaults()  # the base's sampling defaults
        self.tokenizer = tokenizer
        self.models = models
        self.metrics = metrics
        self.admission = admission
        self.max_prompt_chars = max_prompt_chars

    # -- public entry points -------------------------------------------------------------
    async def chat(self, req: ChatCompletionRequest, disconnected: Disconnected,
                   principal: Principal) -> Served:
        self._bound_prompt(req.prompt_chars(), "messages")
        # `name` goes to the chat template, as in vLLM: the model's template decides its use.
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    | ({"name": m.name} if m.name else {}) for m in req.messages]
        top = (req.top_logprobs or 0) if req.logprobs else None
        fmt = req.response_format
        schema = _schema(fmt)

        def sampling(prompt_len: int) -> Sampling:
            return self._sampling(req, prompt_len, req.token_budget(), top, json_schema=schema,
                                  json_object=bool(fmt and fmt.type == "json_object"))

        return await self._run("chat", req, lambda: self._chat_ids(messages), sampling,
                               disconnected, principal)

    async def completion(self, req: CompletionRequest, disconnected: Disconnected,
                         principal: Principal) -> Served:
        self._bound_prompt(req.prompt_chars(), "prompt")
        text = req.prompt_text()
        if not text:
            raise InvalidRequest("prompt is empty", param="prompt")

        def tokenize() -> list[int]:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

        return await self._run("completion", req, tokenize,
                               lambda n: self._sampling(req, n, req.max_tokens, req.logprobs),
                               disconnected, principal)

    # -- shared path ---------------------------------------------------------------------
    def _bound_prompt(self, chars: int, param: str) -> None:
        if chars > self.max_prompt_chars:
            raise InvalidRequest(
                f"`{param}` holds {chars} characters; this server accepts at most "
                f"{self.max_prompt_chars} (--max-prompt-chars)", param=param,
                code="prompt_too_long")

    def _chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Runs in a worker thread (see `off_loop`). The messages reach the model's own template
        as the client sent them, none added or dropped: a template that puts in a default
        system prompt when a request has none does so here, as in vLLM and transformers."""
        try:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                     tokenize=True, return_dict=False)
        except Exception as exc:  # jinja raises its own types for template errors
            raise InvalidRequest(f"messages do not fit the model's chat template: "
                                 f"{str(exc)[:200]}", param="messages") from exc
        if isinstance(ids, dict):
            ids = ids["input_ids"]
        return list(ids)

    def _sampling(self, req, prompt_len: int, budget: int | None, logprobs: int | None,
                  **extra: Any) -> Sampling:
        limit = self.engine.info.max_model_len
        if prompt_len >= limit:
            raise InvalidRequest(
                f"This model's maximum context length is {limit} tokens; the prompt has "
                f"{prompt_len} tokens", param="messages", code="context_length_exceeded")
        max_tokens = budget if budget is not None else limit - prompt_len
        if prompt_len + max_tokens > limit:
            raise InvalidRequest(
                f"This model's maximum context length is {limit} tokens; the prompt has "
                f"{prompt_len} tokens and {max_tokens} were requested for the completion",
                param="max_tokens", code="context_length_exceeded")
        refused = unapplied(self.engine.info.name, req)
        if refused is not None:
            raise InvalidRequest(
                f"`{refused}` is not applied by this server's {self.engine.info.name} engine; "
                f"leave it out (or send 0)", param=refused, code="unsupported_parameter")
        # The request's own values, else the model's generation config, else OpenAI's.
        chosen = self.defaults.resolve(**{name: getattr(req, name) for name in OPENAI_DEFAULTS})
        return Sampling(max_tokens=max_tokens, n=req.n, seed=req.seed, stop=req.stop_list(),
                        logprobs=logprobs, ignore_eos=req.ignore_eos, **chosen, **extra)

    async def _run(self, endpoint: str, req, tokenize: Callable[[], list[int]],
                   sampling_for: Callable[[int], Sampling], disconnected: Disconnected,
                   principal: Principal) -> Served:
        """Admit, resolve `model`, tokenize off the loop, check the budget, lease the adapter;
        every step after admission gives the slot (and the lease) back if it fails."""
        stack = AsyncExitStack()
        label, version = self.models.unknown_label(req.model), NO_VERSION
        try:
            # The server's bound first: its 429 (overload) must not spend the key's rpm. No
            # await between the two, so a key refused by its own limits holds no slot.
            ticket = await stack.enter_async_context(self.admission.slot())
            budget = stack.enter_context(principal.admit())
            target = await self.models.target(req.model, principal, req.user)
            label, version = target.label, target.version
            if target.manifest is not None:  # the gateway lists the adapter it awaits
                ticket.model, ticket.digest = req.model, target.manifest.digest
            ids = await off_loop(tokenize)
            if not ids:
                raise InvalidRequest("the prompt has no tokens", param="prompt")
            sampling = sampling_for(len(ids))
            budget.reserve(len(ids) + sampling.max_tokens * sampling.n)
            adapter = await stack.enter_async_context(self.models.lease(target))
            job = _Job(GenerationRequest(new_id("cmpl"), ids, sampling, adapter), req.model,
                       label, len(ids), endpoint, ticket, target.version)
            budget.usage = lambda: job.prompt_tokens + job.completion_tokens
        except BaseException as exc:
            await stack.aclose()
            self._count(endpoint, label, exc, version)
            raise
        if target.manifest is None:
            digest, ref = BASE_DIGEST, self.models.served_name
        else:
            digest, ref = target.manifest.digest, target.manifest.ref
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return Served(self._stream(job, stack, include_usage), digest, ref)
        try:
            return Served(await self._collect(job, disconnected), digest, ref)
        finally:
            await stack.aclose()

    def _count(self, endpoint: str, label: str, exc: BaseException | None,
               version: str = NO_VERSION) -> None:
        status = "200" if exc is None else str(getattr(exc, "status", 500))
        if isinstance(exc, asyncio.CancelledError):
            status = "499"
        if blames_client(exc):  # a caller's own mistake must not count against the version
            version = NO_VERSION
        self.metrics.requests.labels(endpoint, label, status, version).inc()

    async def _deltas(self, job: _Job) -> AsyncIterator[Delta]:
        """Engine deltas with metrics; aborts the engine request if the consumer goes away."""
        finished = False
        job.ticket.in_engine = True
        try:
            async for delta in self.engine.generate(job.request):
                if delta.token_ids and job.first_token_at is None:
                    job.first_token_at = time.perf_counter()
                    self.metrics.ttft.labels(job.label, job.version).observe(
                        job.first_token_at - job.started)
                job.completion_tokens += len(delta.token_ids)
                yield delta
            finished = True
        finally:
            if not finished:
                await self.engine.abort(job.request.request_id)
            self.metrics.prompt_tokens.labels(job.label).inc(job.prompt_tokens)
            self.metrics.completion_tokens.labels(job.label).inc(job.completion_tokens)
            self.metrics.latency.labels(job.label).observe(time.perf_counter() - job.started)

    def _usage(self, job: _Job) -> dict[str, int]:
        return {"prompt_tokens": job.prompt_tokens, "completion_tokens": job.completion_tokens,
                "total_tokens": job.prompt_tokens + job.completion_tokens}

    async def _collect(self, job: _Job, disconnected: Disconnected) -> dict[str, Any]:
        n = job.request.sampling.n
        texts, reasons = [""] * n, [None] * n
        logprobs: list[list] = [[] for _ in range(n)]

        async def consume() -> None:
            async for d in self._deltas(job):
                texts[d.index] += d.text
                reasons[d.index] = d.finish_reason or reasons[d.index]
                if d.logprobs:
                    logprobs[d.index].extend(d.logprobs)

        task = asyncio.create_task(consume())
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.5)
                if not task.done() and await disconnected():
                    task.cancel()
            await task
        except BaseException as exc:
            task.cancel()
            self._count(job.endpoint, job.label, exc, job.version)
            raise
        self._count(job.endpoint, job.label, None, job.version)
        want_lp = job.request.sampling.logprobs is not None
        if job.endpoint == "chat":
            choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]},
                        "finish_reason": reasons[i],
                        "logprobs": _chat_logprobs(logprobs[i]) if want_lp else None}
                       for i in range(n)]
            obj = "chat.completion"
        else:
            choices = [{"index": i, "text": texts[i], "finish_reason": reasons[i],
                        "logprobs": _completion_logprobs(logprobs[i]) if want_lp else None}
                       for i in range(n)]
            obj = "text_completion"
        return {"id": job.request.request_id, "object": obj, "created": now(),
                "model": job.model, "choices": choices, "usage": self._usage(job)}

    async def _stream(self, job: _Job, stack: AsyncExitStack,
                      include_usage: bool) -> AsyncIterator[str]:
        chat = job.endpoint == "chat"
        obj = "chat.completion.chunk" if chat else "text_completion"
        base = {"id": job.request.request_id, "object": obj, "created": now(),
                "model": job.model}
        want_lp = job.request.sampling.logprobs is not None

        def event(payload: dict[str, Any]) -> str:
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        error: BaseException | None = None
        try:
            if chat:
                for i in range(job.request.sampling.n):
                    yield event(base | {"choices": [{"index": i, "delta": {
                        "role": "assistant", "content": ""}, "finish_reason": None}]})
            async for d in self._deltas(job):
                if chat:
                    choice = {"index": d.index, "delta": {"content": d.text} if d.text else {},
                              "finish_reason": d.finish_reason}
                    if want_lp:
                        choice["logprobs"] = _chat_logprobs(d.logprobs or [])
                else:
                    choice = {"index": d.index, "text": d.text, "finish_reason": d.finish_reason}
                    if want_lp:
                        choice["logprobs"] = _completion_logprobs(d.logprobs or [])
                payload = base | {"choices": [choice]}
                if include_usage:
                    payload["usage"] = None
                yield event(payload)
            if include_usage:
                yield event(base | {"choices": [], "usage": self._usage(job)})
            yield "data: [DONE]\n\n"
        except Exception as exc:  # headers are out: the error becomes the stream's last event
            failure = to_server_error(exc)  # logs the details of an unexpected one
            error = failure
            if isinstance(exc, ServerError):
                log.warning("stream %s failed: %s", job.request.request_id, failure.message)
            yield event(failure.body())
            yield "data: [DONE]\n\n"
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._count(job.endpoint, job.label, error, job.version)
            await stack.aclose()


def _schema(fmt) -> dict | None:
    if fmt is None or fmt.type != "json_schema":
        return None
    spec = fmt.json_schema or {}
    schema = spec.get("schema", spec)
    if not isinstance(schema, dict):
        raise InvalidRequest("response_format.json_schema.schema must be an object",
                             param="response_format")
    return schema


def _chat_logprobs(items) -> dict[str, Any]:
    return {"content": [
        {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode()),
         "top_logprobs": [{"token": tok, "logprob": lp, "bytes": list(tok.encode())}
                          for tok, lp in t.top]}
        for t in items]}


def _completion_logprobs(items) -> dict[str, Any]:
    return {"tokens": [t.token for t in items], "token_logprobs": [t.logprob for t in items],
            "top_logprobs": [dict(t.top) for t in items], "text_offset": []}
