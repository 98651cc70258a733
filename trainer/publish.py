"""Push a finished adapter to the registry with its lineage (data, settings, metrics, versions).

Only called after training finished and the adapter was saved, so a failed or interrupted run
never publishes anything. Options are checked before training starts (``check_options``), so a
bad adapter name does not surface after an hour of training.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from loramux.trainer.config import CONFIG_FILE, TrainConfig
from loramux.trainer.errors import ConfigError, PublishError, PublishRefused
from loramux.trainer.report import CURVE_FILE, REPORT_FILE
from loramux.trainer.verdict import from_report, refusal

# What goes into the registry: the adapter and the files that explain it (no checkpoints,
# no tokenizer copy, nothing pickled).
PUBLISHED_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md", CONFIG_FILE,
                   REPORT_FILE, CURVE_FILE)


def check_options(config: TrainConfig) -> None:
    """Name and alias must be valid registry names; raises ConfigError before training."""
    if not config.publish:
        return
    from loramux.registry.errors import RegistryError
    from loramux.registry.manifest import check_labels
    from loramux.registry.refs import validate_alias, validate_name

    try:
        validate_name(config.name or "")
        if config.alias:
            validate_alias(config.alias)
        check_labels(config.labels)
        if config.gate_eval is not None:  # a bad eval file fails now, not after training
            from loramux.release.evaluation import load_eval_set

            load_eval_set(config.gate_eval)
    except RegistryError as exc:
        raise ConfigError(str(exc)) from None


def local_base_dir(base: str) -> Path | None:
    """The base model's local folder (a path, or a hub id already in the local cache)."""
    path = Path(base).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(base, local_files_only=True))
    except Exception:  # not cached, or not a valid repo id: no fingerprint then
        return None


def quantization_info(config: TrainConfig, report: dict[str, Any]) -> dict[str, Any]:
    """What the base was quantized to in training; the compute dtype as resolved (``auto``
    becomes what the machine ran: ``report["runtime"]["dtype"]``)."""
    if not config.quantize:
        return {"method": "none"}
    from loramux.hardware import resolve_dtype

    # a report without runtime (written before it was recorded): this machine's answer
    dtype = resolve_dtype(report.get("runtime", {}).get("dtype", config.compute_dtype))
    return {"method": config.quant_type, "double_quant": config.double_quant,
            "compute_dtype": dtype}


def lineage(config: TrainConfig, report: dict[str, Any]) -> dict[str, Any]:
    data = report["data"]
    return {
        "dataset_digest": data["train_digest"],
        "dataset": Path(config.data).name,
        "hyperparameters": config.hyperparameters(),
        "metrics": {k: v for k, v in report["metrics"].items() if v is not None},
        "library_versions": report["library_versions"],
        "eval_dataset_digest": data.get("eval_digest"),
        "eval_dataset": Path(data["eval_file"]).name if data.get("eval_file") else None,
        "eval_split": config.eval_split or None,
        "records": {"train": data["train_examples"], "eval": data["eval_examples"],
                    "skipped": data["skipped_records"]},
        "base_model": config.base,
        "runtime": report["runtime"],
        "trainer": "loramux.trainer (TRL SFTTrainer + PEFT LoRA)",
        # base vs adapter on the eval set: numbers, learned true/false/null, the rule's threshold
        "verdict": report.get("verdict"),
    }


def write_push_facts(out: Path, config: TrainConfig, report: dict[str, Any]) -> Path:
    """The facts ``train --publish`` records, left beside the adapter in the registry's terms
    (``PUSH_FACTS``, hidden): ``loramux registry push OUT`` later records the same lineage and
    quantization (a server compares the quantization with its own)."""
    import json

    from loramux.registry.push_args import PUSH_FACTS

    path = out / PUSH_FACTS
    facts = {"lineage": lineage(config, report),
             "quantization": quantization_info(config, report)}
    path.write_text(json.dumps(facts, indent=2, sort_keys=True, default=str) + "\n",
                    encoding="utf-8")
    return path


def _stage(adapter_dir: Path, into: Path) -> None:
    for name in PUBLISHED_FILES:
        src = adapter_dir / name
        if not src.is_file():
            continue
        try:
            os.link(src, into / name)
        except OSError:
            shutil.copy2(src, into / name)


def publish(adapter_dir: Path, config: TrainConfig, report: dict[str, Any]):
    """Push the adapter; returns the registry Manifest (``.ref`` is ``name@version``)."""
    import loramux.registry as reg
    from loramux.registry.errors import RegistryError

    base_dir = local_base_dir(config.base)
    description = config.description or (
        f"LoRA r={config.r} on {Path(config.base).name}"
        f"{' (NF4 QLoRA)' if config.quantize else ''}, trained on {Path(config.data).name}")
    with tempfile.TemporaryDirectory(prefix=".publish-", dir=adapter_dir) as tmp:
        staged = Path(tmp)
        _stage(adapter_dir, staged)
        try:
            registry = reg.open(config.registry)
            try:
                manifest = registry.push(
                    staged, config.name or "", description=description,
                    alias=None if config.gate_eval else config.alias,
                    labels=config.labels or None, base_model=base_dir,
                    quantization=quantization_info(config, report), lineage=lineage(config, report))
                if config.gate_eval is not None:
                    report["gate"] = gate_alias(registry, manifest, config)
                return manifest
            finally:
                registry.close()
        except RegistryError as exc:
            raise PublishError(f"publishing to the registry failed: {exc}") from None


def gate_alias(registry: Any, manifest: Any, config: TrainConfig) -> dict[str, Any]:
    """``--gate-eval``: the published version must pass ``loramux registry promote``'s gate
    (exact match on ``--gate-server``, against the alias's current version) before the alias
    moves to it. The version stays published either way; the returned record (kept in the
    training report as ``gate``) says what happened, and the CLI exits with its ``exit_code``.
    """
    from loramux.registry.errors import RegistryError
    from loramux.registry.evaluations import GateFailed
    from loramux.release.errors import ReleaseError
    from loramux.release.evaluation import load_eval_set
    from loramux.release.promote import Gate, promote, summary

    record: dict[str, Any] = {"alias": config.alias, "server": config.gate_server,
                              "eval": str(config.gate_eval), "evaluation_id": None}
    try:
        done = promote(registry, manifest.ref, config.alias or "", load_eval_set(
            config.gate_eval or ""), server=config.gate_server or "", gate=Gate(
            "exact", config.gate_min_exact, config.gate_max_regression))
    except GateFailed as exc:
        return record | {"passed": False, "line": exc.message, "exit_code": exc.exit_code,
                         "evaluation_id": exc.entry.id if exc.entry else None}
    except (RegistryError, ReleaseError) as exc:
        return record | {"passed": False, "exit_code": exc.exit_code, "line": (
            f"the gate could not run: {exc.message}; {manifest.name}:{config.alias} not moved")}
    if done.entry is None:
        return record | {"passed": True, "exit_code": 0,
                         "line": f"{manifest.name}:{config.alias} already at {manifest.ref}"}
    return record | {"passed": True, "exit_code": 0, "evaluation_id": done.entry.id,
                     "line": f"gate passed: {summary(done.entry.evaluation)}"}


def publish_trained(adapter_dir: Path | str, name: str, registry: str | Path, *,
                    alias: str | None = None, description: str | None = None,
                    force: bool = False):
    """Publish an adapter trained earlier (its saved config and report give the lineage).

    For adapters trained without ``--publish``: the lineage comes from the files the run wrote
    next to the adapter, so publishing later records the same facts as publishing at once, and
    the same gate applies (PublishRefused unless ``force`` when its verdict says it did not
    learn; reports from before verdicts existed are not gated).
    """
    import json

    from loramux.trainer.config import build_config

    adapter_dir = Path(adapter_dir)
    report_file = adapter_dir / REPORT_FILE
    if not report_file.is_file():
        raise PublishError(f"{adapter_dir} has no {REPORT_FILE}: not a finished training run")
    config = build_config(adapter_dir / CONFIG_FILE, {
        "name": name, "registry": str(registry), "alias": alias, "description": description,
        "publish": True})
    check_options(config)
    report = json.loads(report_file.read_text(encoding="utf-8"))
    why = None if force else refusal(from_report(report))
    if why:
        raise PublishRefused(why)
    return publish(adapter_dir, config, report)
