"""The reference engine: transformers + peft, for machines without vLLM and as a correctness oracle.

Adapters are loaded into one PeftModel under their engine names, and every generate call names
the adapter of each row (`adapter_names=`, peft's mixed-adapter batches; `__base__` = none).
Requests run one at a time in a worker thread: this engine is about being right, not fast.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from loramux.server.engines.base import (
    AdapterHandle,
    Delta,
    EngineInfo,
    GenerationRequest,
    TokenLogprob,
)
from loramux.server.errors import InvalidRequest

log = logging.getLogger(__name__)
BASE_ROW = "__base__"


class TransformersEngine:
    def __init__(self, model_dir: Path | str, quantization: str | None = "bitsandbytes",
                 max_model_len: int | None = None, dtype: str = "bfloat16") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

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
        self._base = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs).eval()
        self._tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self._model = None  # becomes a PeftModel with the first adapter
        self._lock = threading.Lock()
        self._aborted: set[str] = set()
        limit = max_model_len or self._base.config.max_position_embeddings
        self.info = EngineInfo(
            name="transformers", model=str(model_dir),
            quantization="bitsandbytes" if quantized else "none", max_model_len=limit,
            max_loras=1_000_000, max_lora_rank=1_000_000, base_model_loads=1,
            resident_bytes=int(self._base.get_memory_footprint()))

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

    async def unload_adapter(self, adapter: AdapterHandle) -> None:
        def drop() -> None:
            with self._lock:
                if self._model is not None and adapter.name in self._model.peft_config:
                    self._model.delete_adapter(adapter.name)

        await asyncio.to_thread(drop)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        s = request.sampling
        if s.json_schema is not None or s.json_object:
            raise InvalidRequest("response_format is not supported by the transformers engine",
                                 param="response_format")
        for index in range(s.n):
            tokens, logprobs, reason = await asyncio.to_thread(self._generate, request, index)
            if request.request_id in self._aborted:
                self._aborted.discard(request.request_id)
                return
            text = self._tokenizer.decode(tokens, skip_special_tokens=True)
            cut = min((text.find(stop) for stop in s.stop if stop in text), default=-1)
            if cut >= 0:
                text, reason = text[:cut], "stop"
            yield Delta(index=index, text=text, token_ids=tokens, finish_reason=reason,
                        logprobs=logprobs)

    def _generate(self, request: GenerationRequest, index: int):
        torch = self._torch
        s = request.sampling
        ids = torch.tensor([request.prompt_token_ids])
        kwargs = {"max_new_tokens": s.max_tokens, "do_sample": s.temperature > 0,
                  "output_scores": True, "return_dict_in_generate": True,
                  "pad_token_id": self._tokenizer.pad_token_id}
        if s.temperature > 0:
            kwargs |= {"temperature": s.temperature, "top_p": s.top_p}
            if s.seed is not None:
                torch.manual_seed(s.seed + index)
        if s.ignore_eos:
            kwargs["eos_token_id"] = None
        with self._lock, torch.no_grad():
            model = self._model or self._base
            if self._model is not None:
                name = request.adapter.name if request.adapter else BASE_ROW
                kwargs["adapter_names"] = [name]
            elif request.adapter is not None:
                raise InvalidRequest(f"adapter {request.adapter.name} is not loaded")
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
        tokens = out.sequences[0, ids.shape[1]:].tolist()
        eos = self._tokenizer.eos_token_id
        reason = "length"
        if tokens and tokens[-1] == eos and not s.ignore_eos:
            reason = "stop"  # the EOS token counts as generated, as in vLLM's usage
        logprobs = None
        if s.logprobs is not None:
            logprobs = []
            for step, token in enumerate(tokens):
                scores = torch.log_softmax(out.scores[step][0].float(), dim=-1)
                top = torch.topk(scores, max(s.logprobs, 1))
                logprobs.append(TokenLogprob(
                    token=self._tokenizer.decode([token]), logprob=float(scores[token]),
                    top=[(self._tokenizer.decode([int(t)]), float(v))
                         for v, t in zip(top.values, top.indices, strict=True)][:s.logprobs]))
        return tokens, logprobs, reason

    async def abort(self, request_id: str) -> None:
        self._aborted.add(request_id)

    async def check_health(self) -> None:
        return None

    def shutdown(self) -> None:
        return None
