"""Helpers shared by the registry tests and the processes they start.

Importable by plain name (conftest puts this folder on sys.path, which spawned processes
inherit), and runnable as a script for the SIGKILL tests.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

ADMIN_TOKEN = "a-secret-token"
WRITE_TOKEN = "w-secret-token"
READ_TOKEN = "r-secret-token"
TOKENS = f"{ADMIN_TOKEN}:admin:admin,{WRITE_TOKEN}:write:writer,{READ_TOKEN}:read:reader"


def write_adapter(
    folder: Path,
    *,
    seed: int = 0,
    r: int = 4,
    config_r: int | None = None,
    modules: tuple[str, ...] = ("q_proj", "v_proj"),
    target_modules: list[str] | str | None = None,
    layers: int = 2,
    hidden: int = 32,
    peft_type: str = "LORA",
    drop: tuple[str, ...] = (),
    base: str = "tiny-llama",
) -> Path:
    """A tiny real LoRA adapter in PEFT's on-disk format (config + safetensors)."""
    import numpy as np  # here, so that the SIGKILL workers start fast
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(layers):
        for module in modules:
            key = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{key}.lora_A.weight"] = rng.standard_normal((r, hidden), dtype=np.float32)
            tensors[f"{key}.lora_B.weight"] = rng.standard_normal((hidden, r), dtype=np.float32)
    for key in drop:
        tensors.pop(key)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": peft_type,
        "r": config_r if config_r is not None else r,
        "lora_alpha": 2 * r,
        "lora_dropout": 0.05,
        "bias": "none",
        "target_modules": list(modules) if target_modules is None else target_modules,
        "base_model_name_or_path": base,
        "task_type": "CAUSAL_LM",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder


TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"


def make_base(folder: Path, *, seed: int = 0, template: str | None = TEMPLATE) -> Path:
    """A tiny base model folder with everything a fingerprint reads."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": 32, "num_hidden_layers": 2,
              "vocab_size": 64, "_name_or_path": str(folder), "transformers_version": "4.56.0",
              "torch_dtype": "bfloat16"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"a": 0, "b": 1}}}))
    tok_config = {"eos_token": "<|end|>", "name_or_path": str(folder)}
    if template is not None:
        tok_config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_config))
    rng = np.random.default_rng(seed)
    save_file({"model.embed_tokens.weight": rng.standard_normal((64, 32), dtype=np.float32),
               "lm_head.weight": rng.standard_normal((64, 32), dtype=np.float32)},
              str(folder / "model.safetensors"))
    (folder / "generation_config.json").write_text("{}")
    return folder


def folder_bytes(folder: Path) -> dict[str, bytes]:
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def flip_byte(path: Path, offset: int = -5) -> None:
    """Rot a stored blob (blobs are read-only on disk, like a real store's would be)."""
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    os.chmod(path, 0o444)


def _open(location: str):
    from loramux.registry import open as open_registry

    return open_registry(location, token=WRITE_TOKEN)


def push_worker(location: str, folder: str, name: str, start: object) -> None:
    """One of the concurrent pushers: wait for the others (a Barrier), push once."""
    start.wait(60)  # type: ignore[attr-defined]
    with _open(location) as registry:
        registry.push(folder, name)


def fetch_worker(
    location: str, ref: str, cache_root: str, count_file: str, start: object, results: object
) -> None:
    """Fetch through an AdapterCache, appending one line per blob actually downloaded."""
    from loramux.server.adapter_cache import AdapterCache

    start.wait()  # type: ignore[attr-defined]
    with _open(location) as registry:
        manifest = registry.resolve(ref)
        real = registry.open_blob

        def counting(digest: str):
            with open(count_file, "a") as f:
                f.write(digest + "\n")
            time.sleep(0.2)  # a slow download: the others must wait for it, not start their own
            return real(digest)

        registry.open_blob = counting  # type: ignore[method-assign]
        results.put(str(AdapterCache(cache_root).fetch(registry, manifest)))  # type: ignore[attr-defined]


def push_forever(location: str, name: str, folders: list[str], fresh: bool = False) -> None:
    """Push the folders round-robin (each differs from the one before) until killed.

    ``fresh``: push a new adapter (like the folders, new weights) each time instead, so that
    every push uploads bytes the store lacks; round-robin pushes over HTTP soon find every
    blob already there and upload nothing, so a kill would never land mid-upload.
    """
    with _open(location) as registry:
        os.write(1, f"started {os.getpid()}\n".encode())  # one write: atomic on a pipe
        i = 0
        while True:
            if fresh:
                folder = Path(folders[0]).parent / f"fresh-{os.getpid()}-{i}"
                write_adapter(folder, seed=os.getpid() * 1000 + i, hidden=4096, r=32)
                registry.push(folder, name)
                shutil.rmtree(folder)
            else:
                registry.push(folders[i % len(folders)], name)
            i += 1


def zygote(location: str, name: str, folders: list[str]) -> None:
    """Import once, then fork a pusher per ``fork`` line: the SIGKILL test kills children
    at random moments many times without paying an interpreter start-up each time.

    The zygote answers ``fork`` (or ``fork fresh``) with the child's pid; the child then says
    ``started <pid>`` once it is about to push (both on the same pipe).
    """
    import numpy  # noqa: F401  (what ``write_adapter`` imports lazily, imported once here)
    import safetensors.numpy  # noqa: F401

    import loramux.registry.remote  # noqa: F401
    from loramux.registry.validate import Limits, scan_folder, validate_adapter

    validate_adapter(scan_folder(Path(folders[0]), Limits()), Limits())  # lazy imports, now
    print("ready", flush=True)
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "fork":  # "fork" or "fork fresh"
            pid = os.fork()
            if pid == 0:
                try:
                    push_forever(location, name, folders, fresh=arg == "fresh")
                finally:
                    os._exit(1)
            os.write(1, f"{pid}\n".encode())
        elif command == "wait":
            _, status = os.waitpid(int(arg), 0)
            os.write(1, f"{os.waitstatus_to_exitcode(status)}\n".encode())


if __name__ == "__main__":
    if sys.argv[1] != "zygote":
        raise SystemExit(f"unknown command {sys.argv[1]}")
    zygote(sys.argv[2], sys.argv[3], sys.argv[4:])
