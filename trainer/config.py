"""Every training option in one validated model; YAML file + command-line overrides.

Precedence: built-in defaults < YAML config < command-line flags. Keys spelled the way other tools
spell them (``lora_r``, ``num_train_epochs``, ``cutoff_len``, ``lr_scheduler_type``, OpenAI's
``n_epochs``/``validation_file``/``suffix``, ...) are accepted as aliases. Relative paths in a
YAML file are relative to that file's folder; on the command line, to the working directory.
The resolved configuration (absolute paths, every default filled in) is saved next to the
adapter as ``train_config.yaml`` and can be fed back with ``--config`` to repeat the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from loramux.trainer.errors import ConfigError
from loramux.trainer.sources import is_dataset_name

CONFIG_FILE = "train_config.yaml"

DataFormat = Literal["auto", "chat", "prompt_completion", "alpaca"]
Scheduler = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
    "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay",
]
Device = Literal["auto", "cpu", "cuda"]

# Other tools' spellings of our options (Axolotl, LLaMA-Factory, MonsterAPI, OpenAI, HF).
ALIASES: dict[str, str] = {
    "model": "base", "base_model": "base", "model_name_or_path": "base",
    "training_file": "data", "train_file": "data", "dataset": "data",
    "validation_file": "eval", "eval_file": "eval", "val_set_size": "eval_split",
    "output_dir": "out", "suffix": "name",
    "n_epochs": "epochs", "num_epochs": "epochs", "num_train_epochs": "epochs",
    "lr": "learning_rate", "lr_scheduler_type": "lr_scheduler",
    "lora_r": "r", "lora_rank": "r", "lora_target_modules": "target_modules",
    "lora_target": "target_modules",
    "cutoff_len": "max_seq_length", "sequence_len": "max_seq_length",
    "max_length": "max_seq_length", "max_seq_len": "max_seq_length",
    "micro_batch_size": "batch_size", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation": "gradient_accumulation_steps",
    "load_in_4bit": "quantize", "use_4bit": "quantize", "optim": "optimizer",
    "sample_packing": "packing", "skip_invalid": "skip_bad_records",
}


class TrainConfig(BaseModel):
    """A training job. Field names are the YAML keys; ``--flag-name`` spells them with dashes."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Each description is the flag's help text (``loramux train --help``): one short line.
    # -- what to train on, where to write -----------------------------------------------------
    base: str = Field(description="Base model folder or hub id.")
    # Or a datasets save_to_disk folder, or a cached dataset's name, either with :split.
    data: Path = Field(description="Training data (file, dataset folder, name:split).")
    eval: Path | None = Field(None, description="Eval data, same formats.")
    eval_split: float = Field(0.0, ge=0.0, lt=0.5, description="Hold out this share for eval.")
    # Without eval or eval_split: an eval file next to train.<ext>, else a 10 % split
    # (loramux.trainer.evaluation); the base and the adapter are compared on it.
    evaluate: bool = Field(True, description="Eval base vs adapter (auto eval data).")
    min_eval_gain: float = Field(0.1, ge=0.0, lt=1.0, description="Eval-loss fall that "
                                 "counts as learned.")
    out: Path = Field(description="Output folder for the adapter.")

    # -- data --------------------------------------------------------------------------------
    format: DataFormat = Field("auto", description="Record format (auto: per file).")
    # For prompt/completion and Alpaca data, e.g. '### Question:\n{prompt}\n### Answer:\n'
    # ({prompt}, or {instruction} and {input}); without one, records become a user/assistant
    # chat turn in the base's chat template.
    prompt_template: str | None = Field(None, description="Template for non-chat records.")
    skip_bad_records: bool = Field(False, description="Skip and count invalid records.")
    max_seq_length: int = Field(1024, ge=8, description="Token cut-off per example.")
    packing: bool = Field(False, description="Pack several examples per sequence.")
    # Why on by default (docs/bench.md 5c): on the demo data, batches of similar length pad
    # ~10 % of their tokens instead of 28 % (~20 % after padding to a multiple of 8), and a few
    # padded widths instead of one per length keep the CPU's oneDNN primitive cache (one entry
    # per matmul shape) from growing the process by ~200 MB.
    group_by_length: bool = Field(True, description="Batch examples of similar length.")
    pad_to_multiple_of: int | None = Field(8, ge=1, description="Pad batch width to a multiple.")

    # -- quantization (QLoRA) ----------------------------------------------------------------
    quantize: bool = Field(True, description="4-bit base (QLoRA), else plain LoRA.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="4-bit data type.")
    double_quant: bool = Field(True, description="Quantize the quantization constants.")
    # auto: bf16 on GPUs and CPUs with bf16 instructions, fp32 on CPUs without (loramux.hardware)
    compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Matmul dtype (auto: bf16 where the hardware has it, else fp32).")

    # -- LoRA --------------------------------------------------------------------------------
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator.")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Biases to train.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="all-linear, or names a,b.")
    use_rslora: bool = Field(False, description="Scale by alpha/sqrt(r).")
    # LoRA+: the B matrices train at this multiple of the learning rate (the paper suggests 16).
    loraplus_lr_ratio: float | None = Field(None, gt=0, description="LoRA+ B-matrix lr ratio.")

    # -- optimization ------------------------------------------------------------------------
    epochs: float = Field(3.0, gt=0, description="Passes over the data.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps.")
    batch_size: int = Field(8, ge=1, description="Examples per device per step.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Steps per optimizer step.")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    lr_scheduler: Scheduler = Field("cosine", description="transformers scheduler name.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Warmup share of steps.")
    warmup_steps: int | None = Field(None, ge=0, description="Warmup steps (wins over ratio).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm.")
    # auto: paged_adamw_8bit on CUDA (bitsandbytes), adamw_torch elsewhere.
    optimizer: str = Field("auto", description="auto, or a transformers optim name.")
    gradient_checkpointing: bool = Field(True, description="Recompute activations.")
    seed: int = Field(42, description="Random seed (data order, init).")

    # -- evaluation, checkpoints -------------------------------------------------------------
    # Default eval cadence: each epoch, or 5 times in a max_steps run; checkpoints at each eval.
    eval_steps: int | None = Field(None, ge=1, description="Eval every N steps.")
    early_stopping_patience: int | None = Field(None, ge=1, description="Stop after N evals "
                                                "without gain.")
    early_stopping_threshold: float = Field(0.0, ge=0, description="Smallest eval-loss gain.")
    save_steps: int | None = Field(None, ge=1, description="Checkpoint every N steps.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept.")
    resume: bool = Field(False, description="Resume from the last checkpoint.")
    overwrite: bool = Field(False, description="Delete an earlier run's checkpoints.")
    # Checkpoints are written next to the adapter (OUT.checkpoints/, loramux.trainer.checkpoints)
    # and deleted when the run finishes; an interrupted run keeps them for --resume.
    keep_checkpoints: bool = Field(False, description="Keep OUT.checkpoints/ after the run.")
    logging_steps: int = Field(10, ge=1, description="Log the loss every N steps.")

    # -- runtime -----------------------------------------------------------------------------
    device: Device = Field("auto", description="Where to train.")
    threads: int | None = Field(None, ge=1, description="CPU threads for torch.")
    # >1 or an accelerate config: `loramux train` re-runs itself under `accelerate launch`
    # (loramux.trainer.distributed); deploy/accelerate/ holds DDP and FSDP-QLoRA configs.
    num_processes: int = Field(1, ge=1, description="Data-parallel processes (accelerate).")
    accelerate_config: Path | None = Field(None, description="accelerate config file (DDP, "
                                           "FSDP).")
    progress: bool = Field(True, description="Show a progress bar.")

    # -- publishing --------------------------------------------------------------------------
    name: str | None = Field(None, description="Adapter name in the registry.")
    publish: bool = Field(False, description="Push the adapter when done.")
    # None: the registry's own default ($LORAMUX_REGISTRY, else ~/.loramux/registry).
    registry: str | None = Field(None, description="Registry folder or URL.")
    alias: str | None = Field(None, description="Alias to move to the new version.")
    description: str = Field("", description="Adapter description.")
    labels: dict[str, str] = Field(default_factory=dict, description="key=value (repeatable).")
    force: bool = Field(False, description="Publish even if no better than the base.")
    # eval-gated alias move (`loramux registry promote`'s gate; API key: $LORAMUX_API_KEY)
    gate_eval: Path | None = Field(None, description="Eval set (chat JSONL) the new version "
                                   "must pass on --gate-server before --alias moves to it.")
    gate_server: str | None = Field(None, description="URL of a `loramux serve` reading the "
                                    "same registry, for --gate-eval.")
    gate_min_exact: float = Field(0.0, ge=0, le=1, description="Exact-match share the gate "
                                  "needs.")
    gate_max_regression: float = Field(0.0, ge=0, le=1, description="How much worse than the "
                                       "alias's current version the gate allows.")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "all-linear":
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    @field_validator("base")
    @classmethod
    def _base_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a model folder or hub id")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.eval is not None and self.eval_split:
            raise ValueError("give either eval (a file) or eval_split (a share of data), not both")
        if not self.evaluate and self.has_eval:
            raise ValueError("no-eval contradicts eval/eval_split: give one or the other")
        if self.early_stopping_patience and not self.has_eval:
            raise ValueError("early_stopping_patience needs eval data: set eval or eval_split")
        if self.publish and not self.name:
            raise ValueError("publish needs a name for the adapter (--name)")
        if self.resume and self.overwrite:
            raise ValueError("resume continues the checkpoints that overwrite would delete; "
                             "pick one")
        if self.alias and not self.publish:
            raise ValueError("alias only applies when publishing (--publish)")
        if self.gate_eval is not None and not (self.alias and self.gate_server):
            raise ValueError("gate_eval gates the alias move: it needs --alias and --gate-server")
        if self.packing and self.format in ("prompt_completion", "alpaca"):
            raise ValueError("packing works with chat data only (it needs assistant-only loss)")
        if (self.early_stopping_patience and self.save_steps and self.eval_steps
                and self.save_steps % self.eval_steps):
            raise ValueError("with early stopping, save_steps must be a multiple of eval_steps")
        return self

    @property
    def has_eval(self) -> bool:
        return self.eval is not None or self.eval_split > 0

    def resolved(self, root: Path | None = None) -> TrainConfig:
        """A copy with absolute paths (relative ones taken from ``root``, default the cwd)."""
        root = (root or Path.cwd()).resolve()
        update: dict[str, Any] = {}
        for key in ("data", "eval", "out", "gate_eval", "accelerate_config"):
            value = getattr(self, key)
            if key == "data" and is_dataset_name(str(value), root):
                continue
            if value is not None and not Path(value).expanduser().is_absolute():
                update[key] = (root / value).resolve()
            elif value is not None:
                update[key] = Path(value).expanduser().resolve()
        base = Path(self.base).expanduser()
        if not base.is_absolute() and (root / base).exists():
            update["base"] = str((root / base).resolve())
        elif base.is_absolute():
            update["base"] = str(base)
        return self.model_copy(update=update)

    def to_yaml(self) -> str:
        import yaml

        data = self.model_dump(mode="json")
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)

    def save(self, path: Path) -> Path:
        path.write_text(self.to_yaml(), encoding="utf-8")
        return path

    def hyperparameters(self) -> dict[str, Any]:
        """The settings that shape the adapter (lineage): no paths, no publishing options."""
        skip = {"base", "data", "eval", "out", "name", "publish", "registry", "alias",
                "description", "labels", "progress", "resume", "overwrite", "keep_checkpoints",
                "threads", "device",
                "evaluate", "min_eval_gain", "force", "num_processes", "accelerate_config"}
        skip |= {"gate_eval", "gate_server", "gate_min_exact", "gate_max_regression"}
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in skip}


def canonical_key(key: str) -> str:
    key = key.strip().replace("-", "_")
    return ALIASES.get(key, key)


def read_yaml(path: Path) -> dict[str, Any]:
    """The YAML config as a dict of canonical keys, paths relative to the file's folder."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value, got {type(raw).__name__}")
    data: dict[str, Any] = {}
    for key, value in raw.items():
        canon = canonical_key(str(key))
        if canon in data:
            raise ConfigError(f"{path}: option {canon!r} is given twice (as {key!r})")
        data[canon] = value
    folder = path.resolve().parent
    for key in ("data", "eval", "out", "gate_eval", "accelerate_config"):
        if key == "data" and isinstance(data.get(key), str) and is_dataset_name(data[key], folder):
            continue
        if isinstance(data.get(key), str) and not Path(data[key]).expanduser().is_absolute():
            data[key] = str(folder / data[key])
    base = data.get("base")
    if isinstance(base, str) and not Path(base).expanduser().is_absolute() and \
            (folder / base).exists():
        data["base"] = str(folder / base)
    return data


def format_validation_error(exc: ValidationError, source: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown option (known: {', '.join(sorted(TrainConfig.model_fields))})"
            close = _closest(str(err["loc"][-1]))
            if close:
                msg = f"unknown option; did you mean {close!r}?"
        elif err["type"] == "missing":
            msg = "required (give it in the config file or on the command line)"
        lines.append(f"{loc}: {msg}" if loc != "config" else msg)
    prefix = f"{source}: " if source else ""
    if len(lines) == 1:
        return f"{prefix}invalid configuration: {lines[0]}"
    return f"{prefix}invalid configuration:\n" + "\n".join(f"  {line}" for line in lines)


def _closest(key: str) -> str | None:
    import difflib

    match = difflib.get_close_matches(key, list(TrainConfig.model_fields), n=1, cutoff=0.7)
    return match[0] if match else None


def build_config(config_file: Path | None = None, overrides: dict[str, Any] | None = None,
                 ) -> TrainConfig:
    """Defaults < YAML file < overrides (None values in overrides mean 'not given')."""
    data: dict[str, Any] = read_yaml(config_file) if config_file is not None else {}
    for key, value in (overrides or {}).items():
        if value is not None:
            data[canonical_key(key)] = value
    try:
        config = TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(config_file or ""))) from None
    return config.resolved()
