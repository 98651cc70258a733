"""`loramux serve`: the OpenAI-compatible server, base loaded once, adapters per request."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from loramux.server.settings import ServerSettings


def serve_command(
    base: str = typer.Option(..., help="Base model: a local folder or a Hub id."),
    registry: str = typer.Option(None, envvar="LORAMUX_REGISTRY",
                                 help="Registry path or http(s) URL."),
    served_name: str = typer.Option(None, help="`model` value meaning the base (default: "
                                    "the base folder's name)."),
    quantization: str = typer.Option("bitsandbytes", help="bitsandbytes (NF4), none, or any "
                                     "vLLM method."),
    max_loras: int = typer.Option(None, help="Adapters in one batch (vLLM slots; default: "
                                   "max-cpu-loras on CPU, 8 on CUDA)."),
    max_cpu_loras: int = typer.Option(64, help="Adapters kept resident in the engine."),
    max_lora_rank: int = typer.Option(64, help="Largest LoRA rank accepted."),
    max_model_len: int = typer.Option(None, help="Context length (default: the model's)."),
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    api_keys: Path = typer.Option(None, exists=True, dir_okay=False,
                                  help="File of API keys, one per line; `KEY admin` for admin."),
    engine: str = typer.Option("vllm", help="vllm, or transformers (reference engine)."),
    pin: list[str] = typer.Option([], help="Adapter refs kept resident (repeatable)."),
    cache_dir: Path = typer.Option(Path.home() / ".cache" / "loramux" / "adapters",
                                   help="Local adapter cache (by digest)."),
    max_cache_bytes: int = typer.Option(8 * 2**30, help="Bound of the local adapter cache."),
    max_pending: int = typer.Option(256, help="Running plus queued requests before 429."),
    log_level: str = typer.Option("info"),
) -> None:
    """Serve the base model and every registry adapter through one OpenAI-compatible API."""
    import asyncio

    import uvicorn

    from loramux.server.app import create_app
    from loramux.server.runtime import Runtime

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = ServerSettings(
            base=base, registry=registry, served_name=served_name, engine=engine,
            quantization=quantization, max_loras=max_loras, max_cpu_loras=max_cpu_loras,
            max_lora_rank=max_lora_rank, max_model_len=max_model_len, host=host, port=port,
            api_keys=api_keys, pin=pin, cache_dir=cache_dir, max_cache_bytes=max_cache_bytes,
            max_pending=max_pending)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    runtime = Runtime(settings)
    app = create_app(runtime)  # its lifespan pins adapters at start and closes the engine at exit
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(),
                            timeout_graceful_shutdown=5)
    asyncio.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    typer.run(serve_command)
