"""The reference engine: transformers + peft, for machines without vLLM and as a correctness oracle.

Adapters are loaded into one PeftModel under their engine names, and every generate call names
the adapter of each row (`adapter_names=`, peft's mixed-adapter batches; `__base__` = none).
One worker thread runs generate: requests that arrive while it is busy are batched together
(left-padded) when their sampling settings agree, whatever their adapters, so a burst over
several adapters costs one forward pass per token rather than one per request. Seeded sampling
runs alone, so a seed gives the same text however requests happen to be batched. This engine
is about being right first; batching keeps it usable as a fallback server.

Per-request state lives only while the request's `generate` runs (`_live`): an abort marks that
request's jobs, and an abort for a request that has ended is a no-op, so a long-running server
keeps nothing per finished or aborted request.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from loramux.server.engines.base import (
    AdapterHandle,
    Delta,
    EngineInfo,
    GenerationRequest,
    TokenLogprob,
)
from loramux.server.errors import InvalidRequest
from loramux.server.model_defaults import read_model_defaults

BASE_ROW = "__base__"
MAX_BATCH = 32
log = logging.getLogger(__name__)


@dataclass
class _Job:
    """One choice of one request, waiting for the worker."""

    request: GenerationRequest
    index: int
    future: Future
    aborted: bool = False  # set from the event loop, read by the worker: skip, nobody waits

    @property
    def batch_key(self) -> tuple:
        """Jobs with equal keys can share a generate call (each row keeps its own adapter)."""
        s = self.request.sampling
        if s.seed is not None and s.temperature > 0:
            return ("alone", id(self))
        return (s.temperature, s.top_p, s.top_k, s.min_p, s.repetition_penalty, s.ignore_eos,
                s.logprobs)


class TransformersEngine:
    def __init__(self, model_dir: Path | str, quantization: str | None = "bitsandbytes",
                 max_model_len: int | None = None, dtype: str = "bfloat16",
                 on_base_load: Callable[[], None] = lambda: None) -> None:
        import torch
        from transformers import AutoTokenizer, BitsAndBytesConfig

        self._torch = torch
        torch_dtype = getattr(torch, dtype)
        kwargs = {"dtype": torch_dtype}
        quantized = quantization not in (None, "none")
        if quantized:
            if quantization != "bitsandbytes":
                raise ValueError("the reference engine serves bitsandbytes (NF4) or none")
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch_dtype)
        self._model_dir, self._load_kwargs, self._on_base_load = model_dir, kwargs, on_base_load
        self._lock = threading.Lock()  # adapters change only between generate calls
        self._adapters: dict[str, AdapterHandle] = {}  # what a restart loads again
        self._load_base()
        self._tokenizer = AutoTokenizer.from_pretrained(model_dir)
        # Every end id of the model (its generation config's and the tokenizer's eos), in order:
        # generate stops a row at any of them, and the answer is cut at the first one.
        self._end_ids = sorted(read_model_defaults(
            model_dir, self._tokenizer.eos_token_id).end_token_ids)
        self._live: dict[str, list[_Job]] = {}  # request id -> its jobs, while it runs
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.largest_batch = 0  # for tests and logs: how much batching actually happened
        self._worker = threading.Thread(target=self._work, name="reference-engine", daemon=True)
        self._worker.start()
        limit = max_model_len or self._base.config.max_position_embeddings
        self.info = EngineInfo(
            name="transformers", model=str(model_dir),
            quantization="bitsandbytes" if quantized else "none", max_model_len=limit,
            max_loras=1_000_000, max_lora_rank=1_000_000,
            resident_bytes=int(self._base.get_memory_footprint()))

    def _load_base(self) -> None:
        """Load the base weights (and drop every adapter): at start, and on `restart`."""
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(self._model_dir, **self._load_kwargs).eval()
        with self._lock:
            self._base, self._model = base, None  # a PeftModel once the first adapter loads
        log.info("reference engine loaded the base weights from %s", self._model_dir)
        self._on_base_load()

    async def restart(self) -> None:
        """Operator action: load the base weights again, then the adapters that were loaded."""
        await asyncio.to_thread(self._load_base)
        for handle in list(self._adapters.values()):
            await self.load_adapter(handle)

    async def load_adapter(self, adapter: AdapterHandle) -> None:
        await asyncio.to_thread(self._load, adapter)

    def _load(self, adapter: AdapterHandle) -> None:
        from peft import PeftModel

        with self._lock:
            if self._model is None:
                self._model = PeftModel.from_pretrained(self._base, str(adapter.path),
                                                        adapter_name=adapter.name)
            elif adapter.name not in self._model.peft_config:
                self._model.load_adapter(str(adapter.path), adapter_name=adapter.name)
            self._model.eval()
            self._adapters[adapter.name] = adapter

    async def unload_adapter(self, adapter: AdapterHandle) -> None:
        def drop() -> None:
            with self._lock:
                self._adapters.pop(adapter.name, None)
                if self._model is not None and adapter.name in self._model.peft_config:
                    self._model.delete_adapter(adapter.name)

        await asyncio.to_thread(drop)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        s = request.sampling
        if s.json_schema is not None or s.json_object:
            raise InvalidRequest("response_format is not supported by the transformers engine",
                                 param="response_format")
        jobs = [_Job(request, index, Future()) for index in range(s.n)]
        self._live[request.request_id] = jobs
        try:
            for job in jobs:
                self._jobs.put(job)
            for job in jobs:
                tokens, logprobs, reason = await asyncio.wrap_future(job.future)
                if job.aborted:
                    return
                # An end token is not text (vLLM does not detokenize it either), special or not.
                shown = tokens[:-1] if reason == "stop" else tokens
                text = self._tokenizer.decode(shown, skip_special_tokens=True)
                cut = min((text.find(stop) for stop in s.stop if stop in text), default=-1)
                if cut >= 0:
                    text, reason = text[:cut], "stop"
                yield Delta(index=job.index, text=text, token_ids=tokens, finish_reason=reason,
                            logprobs=logprobs)
        finally:  # ended, aborted or its consumer gone: forget it, and skip what is queued
            if self._live.get(request.request_id) is jobs:
                del self._live[request.request_id]
            for job in jobs:
                job.aborted = True

    @property
    def requests_in_engine(self) -> int:
        """Requests whose state the engine holds: those being generated, nothing more."""
        return len(self._live)

    def _work(self) -> None:
        """Take what is queued, group it by sampling settings, run each group as one batch."""
        while True:
            first = self._jobs.get()
            if first is None:
                return
            pending = [first]
            while len(pending) < MAX_BATCH:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._jobs.put(None)
                    break
                pending.append(job)
            groups: dict[tuple, list[_Job]] = {}
            for job in pending:
                groups.setdefault(job.batch_key, []).append(job)
            for group in groups.values():
                # A future its waiter cancelled cannot take a result; running ones cannot be
                # cancelled any more, so every set_result below is safe.
                live: list[_Job] = []
                for job in group:
                    if not job.future.set_running_or_notify_cancel():
                        continue
                    if job.aborted:
                        job.future.set_result(([], None, "abort"))
                    else:
                        live.append(job)
                if not live:
                    continue
                try:
                    results = self._generate(live)
                except Exception as exc:  # the requests fail, the engine keeps serving
                    for job in live:
                        job.future.set_exception(exc)
                    continue
                for job, result in zip(live, results, strict=True):
                    job.future.set_result(result)

    def _generate(self, jobs: list[_Job]):
        """One left-padded generate call for jobs with equal sampling settings."""
        torch = self._torch
        s = jobs[0].request.sampling
        self.largest_batch = max(self.largest_batch, len(jobs))
        pad = self._tokenizer.pad_token_id
        width = max(len(j.request.prompt_token_ids) for j in jobs)
        ids = torch.tensor([[pad] * (width - len(j.request.prompt_token_ids))
                            + list(j.request.prompt_token_ids) for j in jobs])
        mask = torch.tensor([[0] * (width - len(j.request.prompt_token_ids))
                             + [1] * len(j.request.prompt_token_ids) for j in jobs])
        # Every setting explicit: generate would otherwise take what is unset from the model's
        # generation config and its own defaults (top_k=50), which vLLM does not.
        kwargs = {"max_new_tokens": max(j.request.sampling.max_tokens for j in jobs),
                  "do_sample": s.temperature > 0, "output_scores": True,
                  "return_dict_in_generate": True, "pad_token_id": pad,
                  "eos_token_id": None if s.ignore_eos else self._end_ids,
                  "repetition_penalty": s.repetition_penalty}
        if s.temperature > 0:
            kwargs |= {"temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k,
                       "min_p": s.min_p}
            if s.seed is not None:
                torch.manual_seed(s.seed + jobs[0].index)
        with self._lock, torch.no_grad():
            model = self._model or self._base
            if self._model is not None:
                kwargs["adapter_names"] = [j.request.adapter.name if j.request.adapter
                                           else BASE_ROW for j in jobs]
            elif any(j.request.adapter is not None for j in jobs):
                raise InvalidRequest("adapter is not loaded")
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        ends = set() if s.ignore_eos else set(self._end_ids)
        results = []
        for row, job in enumerate(jobs):
            tokens = out.sequences[row, width:].tolist()[:job.request.sampling.max_tokens]
            reason = "length"
            end = next((i for i, token in enumerate(tokens) if token in ends), None)
            if end is not None:  # the end token counts as generated, as in vLLM
                tokens, reason = tokens[:end + 1], "stop"
            logprobs = None
            if s.logprobs is not None:
                logprobs = []
                for step, token in enumerate(tokens):
                    scores = torch.log_softmax(out.scores[step][row].float(), dim=-1)
                    top = torch.topk(scores, max(s.logprobs, 1))
                    logprobs.append(TokenLogprob(
                        token=self._tokenizer.decode([token]), logprob=float(scores[token]),
                        top=[(self._tokenizer.decode([int(t)]), float(v))
                             for v, t in zip(top.values, top.indices, strict=True)][:s.logprobs]))
            results.append((tokens, logprobs, reason))
        return results

    async def abort(self, request_id: str) -> None:
        for job in self._live.get(request_id, ()):
            job.aborted = True

    async def check_health(self) -> None:
        return None

    def shutdown(self) -> None:
        self._jobs.put(None)
