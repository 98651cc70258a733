"""Convert a GGUF checkpoint into a plain transformers folder that every part of loramux loads.

Invariants:
- The folder is built in a temporary sibling and renamed into place only after the converter has
  reloaded it and matched its logits against the GGUF-loaded model: an interrupted or failed import
  leaves the destination as it was.
- A folder is replaced only when it is empty, an earlier import of the same file (same sha256), or
  ``force`` says so; importing the same file, dtype and converter version again is a no-op.
- Nothing is assumed about the model: tied embeddings stay tied (no lm_head copy is written), the
  chat template and the special-token ids come from the GGUF's own metadata, and every
  end-of-generation id it implies goes into ``generation_config.eos_token_id``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loramux.bases.errors import (
    BaseImportError,
    ConversionFailed,
    DestinationInUse,
    UnsupportedArchitecture,
)
from loramux.bases.header import GGUFHeader, check_gguf, read_header
from loramux.bases.provenance import (
    Provenance,
    SourceFile,
    read_provenance,
    sha256_file,
    write_provenance,
)

log = logging.getLogger(__name__)

DTYPES = ("bfloat16", "float16", "float32")
# Architectures loramux has converted, trained on and served end to end. transformers reads more;
# add one here together with a test that converts a real file of it.
SUPPORTED_ARCHITECTURES = frozenset({"llama"})
PROBE = [{"role": "user", "content": "What is the capital of France?"}]
# The reloaded folder must give the GGUF model's logits; both compute from the same dequantized
# weights in the same dtype, so anything beyond rounding noise means a weight went missing.
LOGIT_TOLERANCE = 1e-3

# What transformers raises on a GGUF it cannot turn into a model (missing keys, odd shapes).
TRANSFORMERS_ERRORS = (ValueError, KeyError, TypeError, OSError, RuntimeError)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ImportResult:
    """The folder, its provenance, and whether it was already current (nothing was done)."""

    path: Path
    provenance: Provenance
    already_current: bool


def import_gguf(source: Path | str, out: Path | str, *, dtype: str = "bfloat16",
                force: bool = False, progress: Progress | None = None) -> ImportResult:
    """Convert ``source`` (a .gguf file) into the transformers folder ``out``."""
    started = time.perf_counter()
    source, out = Path(source), Path(out)
    say = progress or (lambda step: None)
    if dtype not in DTYPES:
        raise BaseImportError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    check_gguf(source)
    say(f"hashing {source.name}")
    digest = sha256_file(source)
    existing = _check_destination(out, digest, force)
    if existing is not None and existing.is_import_of(digest, dtype) and not force:
        return ImportResult(out, existing, already_current=True)

    say(f"reading the metadata of {source.name}")
    header = read_header(source)
    if header.architecture not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"{source}: GGUF architecture {header.architecture!r} is not supported "
            f"(supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))})")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.importing.", dir=out.parent))
    try:
        source_file = SourceFile(
            file_name=source.name, size=source.stat().st_size, sha256=digest,
            architecture=header.architecture, name=header.name, file_type=header.file_type,
            tensor_types=header.tensor_types)
        record = _convert(source, header, source_file, tmp, dtype, say)
        record = record.model_copy(update={"seconds": round(time.perf_counter() - started, 1)})
        write_provenance(tmp, record)
        _open_permissions(tmp)
        record = _commit(tmp, out, record)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("imported %s into %s in %.1fs", source, out, record.seconds)
    return ImportResult(out, record, already_current=False)


def _check_destination(out: Path, digest: str, force: bool) -> Provenance | None:
    """The folder's provenance if it is one; refuses a folder that is anything else."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise DestinationInUse(f"{out} exists and is not a folder")
    existing = read_provenance(out)
    if existing is not None and existing.source.sha256 == digest:
        return existing
    if force or not any(out.iterdir()):
        return None
    what = (f"an import of another file ({existing.source.file_name})" if existing
            else "not an earlier import")
    raise DestinationInUse(f"{out} exists and is {what}; pass --force to replace it")


def _convert(source: Path, header: GGUFHeader, source_file: SourceFile, tmp: Path, dtype: str,
             say: Progress) -> Provenance:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GgufConfig

    torch_dtype = getattr(torch, dtype)
    with _quiet_transformers():
        try:
            say("reading the tokenizer and chat template")
            tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
            say(f"dequantizing the weights to {dtype}")
            model = AutoModelForCausalLM.from_pretrained(
                str(source.parent), gguf_file=source.name, dtype=torch_dtype,
                quantization_config=GgufConfig(dequantize=True))
        except TRANSFORMERS_ERRORS as exc:
            raise ConversionFailed(f"transformers cannot read {source.name}: "
                                   f"{type(exc).__name__}: {exc}") from exc
        model.eval()
        _drop_quantization(model)
        _settle_tokenizer(tokenizer, header)

        say("writing safetensors, tokenizer and generation config")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        eos = header.end_ids if len(header.end_ids) > 1 else header.eos_id
        GenerationConfig(bos_token_id=header.bos_id, eos_token_id=eos,
                         pad_token_id=header.pad_id).save_pretrained(tmp)

        say("checking the folder against the GGUF model")
        check = _verify(model, tokenizer, tmp, torch_dtype)
    tied = bool(model.config.tie_word_embeddings)
    return Provenance(
        versions=_versions(),
        source=source_file,
        dtype=dtype,
        parameters=sum(p.numel() for p in model.parameters()),
        tie_word_embeddings=tied,
        eos_token_ids=header.end_ids,
        eos_tokens=header.end_texts,
        chat_template=tokenizer.chat_template is not None,
        check=check,
        imported_at=datetime.now(UTC).isoformat(timespec="seconds"),
        seconds=0.0,
    )


def _drop_quantization(model: Any) -> None:
    """A dequantized model must save as a plain one (transformers usually drops these itself)."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def _settle_tokenizer(tokenizer: Any, header: GGUFHeader) -> None:
    """The GGUF's chat template and context length on the tokenizer; the template must render."""
    from jinja2 import TemplateError

    if header.chat_template and not tokenizer.chat_template:
        tokenizer.chat_template = header.chat_template
    if header.context_length:
        tokenizer.model_max_length = int(header.context_length)
    if tokenizer.chat_template is None:
        log.warning("the GGUF has no chat template; the folder will have none either")
        return
    try:
        tokenizer.apply_chat_template(PROBE, tokenize=False, add_generation_prompt=True)
    except (TemplateError, ValueError, TypeError) as exc:
        raise ConversionFailed(f"the GGUF's chat template does not render: {exc}") from None


def _verify(model: Any, tokenizer: Any, folder: Path, torch_dtype: Any) -> dict[str, int | float]:
    """Reload the folder alone and match the GGUF model's logits; ties must survive the load."""
    import torch
    from transformers import AutoModelForCausalLM

    if tokenizer.chat_template is not None:
        text = tokenizer.apply_chat_template(PROBE, tokenize=False, add_generation_prompt=True)
    else:
        text = PROBE[0]["content"]
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
    reloaded.eval()
    if model.config.tie_word_embeddings and (
            reloaded.get_output_embeddings().weight.data_ptr()
            != reloaded.get_input_embeddings().weight.data_ptr()):
        raise ConversionFailed("the converted folder lost the tie between lm_head and embeddings")
    with torch.no_grad():
        expected = model(ids).logits.float()
        got = reloaded(ids).logits.float()
    diff = (expected - got).abs().max().item()
    if not diff <= LOGIT_TOLERANCE:
        raise ConversionFailed(
            f"the converted folder's logits differ from the GGUF model's by {diff:.3g}")
    return {"probe_tokens": int(ids.shape[1]), "max_abs_logit_diff": diff}


def _open_permissions(folder: Path) -> None:
    """mkdtemp makes a private folder; the imported model is as readable as any file made here."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _commit(tmp: Path, out: Path, record: Provenance) -> Provenance:
    """Rename the finished folder into place, moving any folder it replaces aside first."""
    if out.exists():
        old = out.parent / f".{out.name}.replaced.{os.getpid()}.{time.monotonic_ns()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
        return record
    try:
        os.replace(tmp, out)
    except OSError:
        # Another process finished the same import first: theirs is as good as ours.
        current = read_provenance(out)
        if current is None or not current.is_import_of(record.source.sha256, record.dtype):
            raise DestinationInUse(f"{out} appeared while importing; not replacing it") from None
        shutil.rmtree(tmp, ignore_errors=True)
        return current
    return record


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No tqdm bars from transformers while converting: the CLI shows one status line instead.

    The GGUF reader uses tqdm directly rather than transformers' switchable one, so its module's
    ``tqdm`` is swapped for a silent one for the duration (and put back).
    """
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    reader_tqdm = getattr(gguf_utils, "tqdm", None)
    hf_logging.disable_progress_bar()
    if reader_tqdm is not None:
        gguf_utils.tqdm = functools.partial(reader_tqdm, disable=True)
    try:
        yield
    finally:
        if reader_tqdm is not None:
            gguf_utils.tqdm = reader_tqdm
        if was_enabled:
            hf_logging.enable_progress_bar()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("loramux", "transformers", "gguf", "torch"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found
