"""``train(config) -> TrainResult``: data file in, saved (and optionally published) adapter out.

Order matters: everything that can be wrong with the options or the data is checked before the
model loads (and long before the first step), and the registry is only touched after the adapter
and its reports are on disk. TRL's ``SFTTrainer`` does the training itself: chat templating,
assistant-only / completion-only loss, packing, truncation, gradient accumulation, evaluation,
checkpoints and resuming. Chat templates without ``{% generation %}`` markers that TRL cannot
patch are tokenized and masked by ``loramux.trainer.chat_masks`` instead. The adapter folder
ends up holding the adapter alone: checkpoints live beside it (``loramux.trainer.checkpoints``).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loramux.trainer import distributed
from loramux.trainer.chat_masks import ChatTokens, fit_template, require_fast, trl_masks_assistant
from loramux.trainer.checkpoints import checkpoint_dir, remove_checkpoints, resume_from
from loramux.trainer.config import CONFIG_FILE, TrainConfig, build_config
from loramux.trainer.data import Example, LoadedData, check_lengths, load_data, split
from loramux.trainer.errors import (
    ConfigError,
    DataError,
    ModelError,
    PublishRefused,
    TrainingInterrupted,
)
from loramux.trainer.evaluation import (
    MIN_RECORDS_TO_SPLIT,
    auto_split_size,
    exact_match_items,
    measure,
    sibling_eval_file,
)
from loramux.trainer.publish import check_options, publish, write_push_facts
from loramux.trainer.report import (
    CURVE_FILE,
    REPORT_FILE,
    build_report,
    plot_loss_curve,
    read_report,
    write_report,
)
from loramux.trainer.sft import sft_config, trainer_class
from loramux.trainer.verdict import Verdict, judge, refusal

log = logging.getLogger(__name__)
# bitsandbytes warns at import when the optional `kernels` package is missing; the fallback
# kernels work, so keep that out of the user's console.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


@dataclass
class TrainResult:
    adapter_dir: Path
    config: TrainConfig
    metrics: dict[str, Any]
    report: dict[str, Any]
    report_path: Path
    loss_curve_path: Path
    config_path: Path
    reference: str | None = None  # name@version when published
    manifest: Any = None
    skipped: list[str] = field(default_factory=list)
    verdict: Verdict | None = None


@dataclass
class PreparedData:
    train: list[Example]
    eval: list[Example]
    kind: str
    train_file: LoadedData
    eval_file: LoadedData | None
    skipped: list[str]
    train_tokens: int = 0
    eval_path: Path | None = None  # the eval file used (given, or found next to the data)
    eval_note: str = ""  # where the eval data came from, for the user
    # chat records tokenized and masked by loramux (by ``where``); None: TRL templates them
    chat_tokens: dict[str, ChatTokens] | None = None

    def rows(self, examples: list[Example], prompt_template: str | None) -> list[dict[str, Any]]:
        """The rows TRL gets: pre-tokenized with assistant masks, or records it templates."""
        if self.chat_tokens is not None:
            return [self.chat_tokens[e.where].row() for e in examples]
        return [e.to_row(prompt_template) for e in examples]


def coerce_config(config: TrainConfig | dict[str, Any] | str | Path) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config.resolved()
    if isinstance(config, str | Path):
        return build_config(Path(config))
    return build_config(None, config)


def prepare_data(config: TrainConfig) -> PreparedData:
    """Load and validate train/eval records (no tokenizer needed yet)."""
    opts = {"fmt": config.format, "prompt_template": config.prompt_template,
            "skip_bad": config.skip_bad_records}
    train_file = load_data(config.data, **opts)
    skipped = list(train_file.skipped)
    eval_file = None
    eval_path = config.eval
    n = len(train_file.examples)
    if eval_path is None and config.evaluate and not config.eval_split:
        eval_path = sibling_eval_file(config.data)
    if eval_path is not None:
        eval_file = load_data(eval_path, **opts)
        skipped += eval_file.skipped
        source = {e.kind for e in train_file.examples}
        if eval_file.kind != train_file.kind or {e.kind for e in eval_file.examples} != source:
            raise DataError(f"{eval_path}: eval data is {eval_file.examples[0].kind} but the "
                            f"training data is {train_file.examples[0].kind}; use one format")
        train, evals = train_file.examples, eval_file.examples
        found = "" if config.eval is not None else f"found next to {Path(config.data).name}, "
        note = f"eval: {eval_path} ({found}{len(evals)} records)"
    elif config.eval_split:
        train, evals = split(train_file, config.eval_split, config.seed)
        note = f"eval: {len(evals)} of {n} records held out (--eval-split {config.eval_split:g})"
    elif not config.evaluate:
        train, evals = train_file.examples, []
        note = "eval: off (--no-eval): no verdict on whether the adapter learns"
    elif count := auto_split_size(n):
        train, evals = split(train_file, 0.0, config.seed, count=count)
        note = (f"eval: {count} of {n} records held out (no eval file next to the data; "
                "--eval FILE, --eval-split or --no-eval to choose)")
    else:
        train, evals = train_file.examples, []
        note = (f"eval: none: {n} records are too few to hold any out (fewer than "
                f"{MIN_RECORDS_TO_SPLIT}); give --eval FILE for a verdict")
    return PreparedData(train, evals, train_file.kind, train_file, eval_file, skipped,
                        eval_path=eval_path, eval_note=note)


def _needs_chat_template(config: TrainConfig, kind: str) -> bool:
    return kind == "chat" or config.prompt_template is None


def check_with_tokenizer(config: TrainConfig, data: PreparedData, tokenizer) -> None:
    """Chat template present and fitting every record; no example longer than the cut-off (or
    skip those)."""
    if _needs_chat_template(config, data.kind):
        if not tokenizer.chat_template:
            hint = ("chat data needs a base with a chat template" if data.kind == "chat" else
                    "use --prompt-template to render prompt/completion or Alpaca records as text")
            raise ModelError(f"the base model {config.base} has no chat template: {hint}")
        _check_template_fit(config, data, tokenizer)
    known = ({w: len(t.input_ids) for w, t in data.chat_tokens.items()}
             if data.chat_tokens is not None else None)
    opts = {"skip_bad": config.skip_bad_records, "known": known}
    train, problems, tokens = check_lengths(data.train, tokenizer, config.max_seq_length,
                                            config.prompt_template, **opts)
    evals, eval_problems, _ = check_lengths(data.eval, tokenizer, config.max_seq_length,
                                            config.prompt_template, **opts)
    if not train:
        raise DataError("no training example fits in max_seq_length", problems)
    if data.eval and not evals:
        raise DataError("no eval example fits in max_seq_length", eval_problems)
    data.train, data.eval = train, evals
    data.skipped += problems + eval_problems
    data.train_tokens = tokens


def _check_template_fit(config: TrainConfig, data: PreparedData, tokenizer) -> None:
    """Every record renders with the chat template; chat records whose template TRL cannot mask
    are tokenized and masked now (``data.chat_tokens``). Bad records: all listed, or skipped."""
    own = data.kind == "chat" and not trl_masks_assistant(tokenizer)
    if own:
        require_fast(tokenizer, config.base)
    train, problems, tokens = fit_template(data.train, tokenizer, own_masks=own)
    evals, eval_problems, eval_tokens = fit_template(data.eval, tokenizer, own_masks=own)
    problems += eval_problems
    if problems and not config.skip_bad_records:
        raise DataError(f"{len(problems)} records do not fit the chat template of {config.base} "
                        "(fix them, or pass --skip-bad-records to leave them out)", problems)
    if not train:
        raise DataError("no training example fits the chat template", problems)
    if data.eval and not evals:
        raise DataError("no eval example fits the chat template", problems)
    data.train, data.eval = train, evals
    data.skipped += problems
    data.chat_tokens = tokens | eval_tokens if own else None


def _quiet_libraries() -> None:
    """Keep the console to our progress bar: no per-map bars, no info chatter."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # e.g. "no `kernels` package"
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", module="torch.utils.checkpoint")
    warnings.filterwarnings("ignore", message=".*use_reentrant.*")


def _peak_memory(device: str) -> tuple[int, str]:
    from loramux.trainer.callbacks import peak_rss_bytes

    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated()), "cuda max allocated"
    return peak_rss_bytes(), "process peak RSS"


def _save_adapter_fsdp(trainer, out: Path) -> None:
    """Gather the sharded adapter into one state dict (every rank), written by the main one."""
    trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(out))
    if distributed.is_main():
        (out / "training_args.bin").unlink(missing_ok=True)  # pickled; not part of an adapter


def _save_adapter(trainer, out: Path) -> None:
    """Adapter weights (safetensors) and config only; no pickled training args."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("adapter_model.safetensors", "adapter_config.json"):
        (out / stale).unlink(missing_ok=True)
    trainer.model.save_pretrained(str(out), safe_serialization=True)


def train(config: TrainConfig | dict[str, Any] | str | Path, *, callbacks: list | None = None,
          console: Any = None, data: PreparedData | None = None) -> TrainResult:
    """Train a LoRA adapter as ``config`` says; publish it when ``config.publish`` is set.

    ``data`` is ``prepare_data(config)`` when the caller already checked it (the CLI does, to
    report bad data before anything else). Raises a TrainerError subclass (ConfigError,
    DataError, ModelError, PublishError, TrainingInterrupted) for anything the user can fix.
    """
    started = time.time()
    config = coerce_config(config)
    check_options(config)
    data = data or prepare_data(config)
    _quiet_libraries()
    from loramux.trainer.model import (
        check_target_modules,
        load_base,
        load_tokenizer,
        lora_config,
        runtime_for,
    )

    runtime = runtime_for(config)
    resume_from_checkpoint = resume_from(config)
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    tokenizer = load_tokenizer(config.base)
    check_with_tokenizer(config, data, tokenizer)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    distributed.init_state(runtime.device)  # before loading: each rank's own GPU under FSDP
    model = load_base(config, runtime)
    check_target_modules(model, config)

    from datasets import Dataset
    from transformers import EarlyStoppingCallback, PrinterCallback

    from loramux.trainer.callbacks import Meter, RichProgress

    rows = data.rows(data.train, config.prompt_template)
    eval_rows = data.rows(data.eval, config.prompt_template)
    meter = Meter()
    progress = RichProgress(meter, console=console,
                            enabled=config.progress and distributed.is_main())
    extra = [meter, progress]
    if config.early_stopping_patience:
        extra.append(EarlyStoppingCallback(config.early_stopping_patience,
                                           config.early_stopping_threshold))
    args = sft_config(config, runtime, data)
    if config.overwrite and not config.resume:
        remove_checkpoints(out)
    try:
        trainer = trainer_class(config)(
            model=model, args=args, train_dataset=Dataset.from_list(rows),
            eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
            processing_class=tokenizer, peft_config=lora_config(config),
            callbacks=[*extra, *(callbacks or [])],
        )
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"the trainer rejected the setup: {exc}") from None
    trainer.remove_callback(PrinterCallback)

    started_step = 0
    items, em_reason = (exact_match_items(data.eval, tokenizer, config.prompt_template)
                        if eval_rows else ([], ""))
    if items and runtime.fsdp:  # generating from a sharded model would need every rank
        items, em_reason = [], "exact match is not measured under FSDP (eval loss decides)"
    mine = items if distributed.is_main() else []  # the others only share the eval loss
    before = after = (None, None)
    try:
        if eval_rows:
            before = measure(trainer, tokenizer, mine, base=True)
            if not runtime.fsdp:
                distributed.rewrap_after_eval(trainer)
        result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        started_step = meter.step_at_start
        if eval_rows:
            after = measure(trainer, tokenizer, mine, base=False)
    except KeyboardInterrupt:
        progress.close()
        step = trainer.state.global_step
        raise TrainingInterrupted(
            f"training interrupted at step {step}: no adapter was saved and nothing was "
            f"published; continue from the last checkpoint in {checkpoint_dir(out)} with "
            "--resume") from None
    finally:
        progress.close()

    if runtime.fsdp:  # every rank takes part in gathering the sharded adapter
        _save_adapter_fsdp(trainer, out)
    if not distributed.is_main():
        distributed.barrier()  # the main process saves, reports and publishes
        return _result_of_main(config, out, started)
    try:
        return _finish(config, data, runtime, trainer, meter, result, out,
                       evaluation=(before, after, items, em_reason if eval_rows else
                                   data.eval_note),
                       started_step=started_step, saved=runtime.fsdp)
    finally:
        distributed.barrier()


def _finish(config: TrainConfig, data: PreparedData, runtime, trainer, meter, result, out: Path,
            *, evaluation, started_step: int, saved: bool) -> TrainResult:
    """The main process's part after training: adapter, report, verdict, publish."""
    before, after, items, em_reason = evaluation
    if not saved:
        _save_adapter(trainer, out)
    if not config.keep_checkpoints:  # only --resume needs them, and this run is done
        remove_checkpoints(out)
    peak, peak_kind = _peak_memory(runtime.device)
    report = build_report(config, data, runtime, trainer, meter, result, out,
                          peak=(peak, peak_kind), started_step=started_step,
                          eval_loss=after[0])
    verdict = judge(before[0], after[0], min_eval_gain=config.min_eval_gain,
                    exact_match_before=before[1], exact_match_after=after[1],
                    exact_match_total=len(items), reason=em_reason)
    report["verdict"] = verdict.as_dict() | {"line": verdict.line(
        trainer.state.global_step, config.learning_rate), "eval": data.eval_note}
    config_path = config.save(out / CONFIG_FILE)
    curve = plot_loss_curve(report["log_history"], out / CURVE_FILE, title=f"{out.name}: loss")
    report_path = write_report(report, out / REPORT_FILE)
    write_push_facts(out, config, report)
    outcome = TrainResult(out, config, report["metrics"], report, report_path, curve,
                          config_path, skipped=data.skipped)
    outcome.verdict = verdict
    why = refusal(verdict) if config.publish and not config.force else None
    if why:
        report["publish_refused"] = why
        write_report(report, report_path)
        raise PublishRefused(f"{why} (the adapter is saved in {out})", outcome)
    if config.publish:
        manifest = publish(out, config, report)
        outcome.manifest = manifest
        outcome.reference = manifest.ref
        from loramux.registry import default_location

        report["published"] = {"ref": manifest.ref, "digest": manifest.digest,
                               "registry": config.registry or default_location()}
        write_report(report, report_path)
    return outcome


def _result_of_main(config: TrainConfig, out: Path, started: float) -> TrainResult:
    """Another rank's view of the run: what the main process wrote (after the barrier)."""
    report_path = out / REPORT_FILE
    report = read_report(report_path)
    if report is None or report_path.stat().st_mtime < started:
        raise TrainingInterrupted("the main process of this distributed run failed before "
                                  "writing its report: see its error")
    if report.get("publish_refused"):
        raise PublishRefused(f"{report['publish_refused']} (the adapter is saved in {out})")
    published = report.get("published") or {}
    return TrainResult(out, config, report["metrics"], report, report_path, out / CURVE_FILE,
                       out / CONFIG_FILE, reference=published.get("ref"))

