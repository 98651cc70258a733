"""The naive baseline: what one would write with transformers + peft and no serving engine.

Every adapter is loaded into one `PeftModel`; each request calls `set_adapter(name)` (or runs with
the adapters disabled for the base) and `generate`s alone, one request at a time, streaming its
tokens as server-sent events in the same OpenAI completions shape the other servers use, so the
same load generator drives it. It computes in the `--dtype` the other servers get (the bench
passes one concrete dtype to all). Run as `python -m loramux.bench.naive_server --model DIR
--adapter NAME=DIR ... --dtype float32 --port P`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


class _TokenStream:
    """A transformers streamer that hands each new token id to an asyncio queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        self.loop, self.queue = loop, queue
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, int(token))

    def end(self) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


class NaiveModel:
    def __init__(self, model_dir: Path, adapters: dict[str, Path], quantization: str,
                 served_name: str, dtype: str = "bfloat16") -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
        if quantization == "bitsandbytes":
            from loramux.trainer.model import quantization_config

            kwargs["quantization_config"] = quantization_config(compute_dtype=dtype)
        elif quantization != "none":
            raise SystemExit(f"naive baseline: unsupported quantization {quantization!r}")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
        if adapters:
            from peft import PeftModel

            items = list(adapters.items())
            model = PeftModel.from_pretrained(model, str(items[0][1]), adapter_name=items[0][0])
            for name, path in items[1:]:
                model.load_adapter(str(path), adapter_name=name)
        model.eval()
        self.model = model
        self.adapters = set(adapters)
        self.served_name = served_name
        self.lock = threading.Lock()

    def generate(self, model_name: str, prompt: str, max_tokens: int, ignore_eos: bool,
                 add_special_tokens: bool, streamer: _TokenStream) -> int:
        import torch

        inputs = self.tokenizer(prompt, add_special_tokens=add_special_tokens,
                                return_tensors="pt")
        kwargs = dict(max_new_tokens=max_tokens, do_sample=False, streamer=streamer,
                      pad_token_id=self.tokenizer.pad_token_id)
        if ignore_eos:
            kwargs["min_new_tokens"] = max_tokens
        with self.lock, torch.inference_mode():
            if model_name == self.served_name:
                ctx = (self.model.disable_adapter() if self.adapters
                       else contextlib.nullcontext())
            else:
                self.model.set_adapter(model_name)
                ctx = contextlib.nullcontext()
            try:
                with ctx:
                    out = self.model.generate(**inputs, **kwargs)
            finally:
                streamer.end()
        return int(out.shape[1] - inputs["input_ids"].shape[1])


def create_app(naive: NaiveModel):
    app = FastAPI()
    worker = ThreadPoolExecutor(max_workers=1)  # one request at a time, in arrival order

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        model = body.get("model")
        if model != naive.served_name and model not in naive.adapters:
            return JSONResponse({"error": {"message": f"unknown model {model}"}}, 404)
        prompt = body["prompt"] if isinstance(body["prompt"], str) else body["prompt"][0]
        max_tokens = int(body.get("max_tokens") or 16)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        streamer = _TokenStream(loop, queue)
        job = loop.run_in_executor(worker, naive.generate, model, prompt, max_tokens,
                                   bool(body.get("ignore_eos")),
                                   bool(body.get("add_special_tokens", True)), streamer)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
            payload: dict[str, Any] = {"id": rid, "object": "text_completion",
                                       "created": created, "model": model, "choices": choices}
            if usage is not None:
                payload["usage"] = usage
            return f"data: {json.dumps(payload)}\n\n"

        async def stream():
            tokens = 0
            while (token := await queue.get()) is not None:
                tokens += 1
                text = naive.tokenizer.decode([token])
                yield event([{"index": 0, "text": text, "finish_reason": None}])
            produced = await job
            yield event([{"index": 0, "text": "", "finish_reason": "length"}])
            yield event([], {"prompt_tokens": 0, "completion_tokens": produced,
                             "total_tokens": produced})
            yield "data: [DONE]\n\n"

        if body.get("stream"):
            return StreamingResponse(stream(), media_type="text/event-stream")
        text = []
        while (token := await queue.get()) is not None:
            text.append(token)
        produced = await job
        return {"id": rid, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": naive.tokenizer.decode(text),
                             "finish_reason": "length"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": produced,
                          "total_tokens": produced}}

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--served-name", required=True)
    parser.add_argument("--adapter", action="append", default=[], help="NAME=DIR (repeatable)")
    parser.add_argument("--quantization", default="bitsandbytes")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args(argv)
    import uvicorn

    from loramux.registry.manifest import parse_labels  # the one k=v parser

    adapters = parse_labels(args.adapter)

    naive = NaiveModel(args.model, {k: Path(v) for k, v in adapters.items()}, args.quantization,
                       args.served_name, args.dtype)
    uvicorn.run(create_app(naive), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
