"""Builds the native LoRA op: `python -m loramux.server.engines.native.build` (`make install`).

The library lands beside the sources, under ``build/`` (git-ignored), in a folder named by a
digest of the sources, torch's version and the flags: a build for other sources or another torch
is never loaded (its C++ ABI may differ), and building again with nothing changed does nothing.
No ``-march``: lora_linear.cpp compiles its kernels for AVX-512, AVX2 and plain x86-64 and picks
one at load, so the same build runs on every CPU. A failed build exits 1 with one line, and the
server runs the Python LoRA ops.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "lora_linear.cpp"
SOURCES = (SOURCE, HERE / "lora_kernels.h")  # what the digest covers
BUILD_DIR = HERE / "build"
PREFIX = "loramux_lora_"
CFLAGS = ("-O3", "-fopenmp")
LDFLAGS = ("-fopenmp",)


def library_name() -> str:
    import torch

    digest = hashlib.sha256()
    for source in SOURCES:
        digest.update(source.read_bytes())
    digest.update(f"{torch.__version__} {' '.join(CFLAGS + LDFLAGS)}".encode())
    return PREFIX + digest.hexdigest()[:12]


def library_path() -> Path:
    """Where the build for these sources and this torch is (whether or not it exists)."""
    name = library_name()
    return BUILD_DIR / name / f"{name}.so"


def build(verbose: bool = False) -> Path:
    """Compile (ninja, ``MAX_JOBS`` workers) unless this build exists; drops older builds."""
    path = library_path()
    if path.is_file():
        return path
    from torch.utils.cpp_extension import load

    for old in BUILD_DIR.glob(PREFIX + "*"):
        shutil.rmtree(old, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    load(name=path.stem, sources=[str(SOURCE)], build_directory=str(path.parent),
         extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS), is_python_module=False,
         verbose=verbose)
    return path


def main(argv: list[str]) -> int:
    try:
        path = build(verbose="-v" in argv)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        print(f"loramux: native LoRA op not built ({reason}); the server will run the Python "
              "LoRA ops (rerun with -v for the compiler's output)", file=sys.stderr)
        return 1
    print(f"loramux: native LoRA op built: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
