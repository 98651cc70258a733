"""TRL's side of a run: the ``SFTConfig`` a ``TrainConfig`` becomes, and the trainer class.

Kept apart from ``api.train`` so the mapping from our options to TRL's (evaluation and
checkpoint cadence, assistant-only or completion-only loss) reads in one place. Chat records
tokenized by ``loramux.trainer.chat_masks`` reach TRL with their ``assistant_masks``: TRL's own
``assistant_only_loss`` is off for them, as it would demand a marked chat template.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from loramux.trainer.checkpoints import checkpoint_dir
from loramux.trainer.config import TrainConfig

if TYPE_CHECKING:
    from loramux.trainer.api import PreparedData


def _eval_and_save_plan(config: TrainConfig, has_eval: bool) -> dict[str, Any]:
    plan: dict[str, Any] = {}
    eval_steps = config.eval_steps
    if has_eval and eval_steps is None and config.max_steps is not None:
        eval_steps = max(1, config.max_steps // 5)
    if has_eval:
        plan.update(eval_strategy="steps" if eval_steps else "epoch")
        if eval_steps:
            plan["eval_steps"] = eval_steps
    else:
        plan["eval_strategy"] = "no"
    save_steps = config.save_steps
    if save_steps is None and config.early_stopping_patience and eval_steps:
        save_steps = eval_steps
    if save_steps is None and config.max_steps is not None:
        save_steps = eval_steps if has_eval and eval_steps else max(1, config.max_steps // 5)
    if config.early_stopping_patience and has_eval and not eval_steps:
        plan["save_strategy"] = "epoch"
    elif save_steps:
        plan.update(save_strategy="steps", save_steps=save_steps)
    else:
        plan["save_strategy"] = "epoch"
    if config.early_stopping_patience:
        plan.update(load_best_model_at_end=True, metric_for_best_model="eval_loss",
                    greater_is_better=False)
    return plan


def trainer_class(config: TrainConfig):
    """TRL's SFTTrainer, with LoRA+ param groups (peft's) when ``loraplus_lr_ratio`` is set."""
    from trl import SFTTrainer

    if not config.loraplus_lr_ratio:
        return SFTTrainer
    ratio = config.loraplus_lr_ratio

    class LoraPlusSFTTrainer(SFTTrainer):
        def create_optimizer(self, model=None):
            if self.optimizer is None:
                from peft.optimizers import create_loraplus_optimizer

                cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
                kwargs = dict(kwargs)
                lr = kwargs.pop("lr", self.args.learning_rate)
                self.optimizer = create_loraplus_optimizer(
                    self.model, cls, lr=lr, loraplus_lr_ratio=ratio,
                    loraplus_weight_decay=self.args.weight_decay, **kwargs)
            return self.optimizer

    return LoraPlusSFTTrainer


def sft_config(config: TrainConfig, runtime, data: PreparedData):
    from trl import SFTConfig

    chat = data.kind == "chat"
    return SFTConfig(
        output_dir=str(checkpoint_dir(config.out)),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_steps if config.warmup_steps is not None
        else config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim=runtime.optimizer,
        gradient_checkpointing=config.gradient_checkpointing,
        # PEFT's QLoRA recipes (and its FSDP-QLoRA one) checkpoint with reentrant autograd; on
        # the bench it is also ~10 % faster than the non-reentrant default
        gradient_checkpointing_kwargs={"use_reentrant": True},
        bf16=runtime.bf16,
        fp16=runtime.fp16,
        use_cpu=runtime.device == "cpu",
        # every LoRA weight is used in every forward: skip DDP's extra graph walk
        ddp_find_unused_parameters=False if runtime.processes > 1 else None,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        save_total_limit=config.save_total_limit,
        save_only_model=False,
        report_to=[],
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        max_length=config.max_seq_length,
        packing=config.packing,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        pad_to_multiple_of=config.pad_to_multiple_of,
        assistant_only_loss=chat and data.chat_tokens is None,
        completion_only_loss=None if chat else True,
        dataset_num_proc=None,
        remove_unused_columns=True,
        **_eval_and_save_plan(config, bool(data.eval)),
    )
