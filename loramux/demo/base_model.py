"""Build the offline demo base model: tokenizer, chat template and briefly pretrained Llama weights.

A newcomer's first run must not need a model hub, and tests need a model that loads unchanged in
transformers, peft and vLLM (bf16 and bitsandbytes NF4). So the project trains a tiny one itself,
deterministically, and caches it under a recipe hash: the same recipe reuses the folder, a changed
recipe (or changed builder code) rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loramux import build_store
from loramux.demo import corpus

log = logging.getLogger(__name__)

RECIPE_FILE = "loramux_demo_recipe.json"
STORE_KIND = "demo-base"  # its entries in loramux.build_store, keyed by the recipe digest
# Bump when the training code changes what a recipe produces; corpus and template changes are
# caught by hashing their output. 2: pretrained in fp32 (was bf16 autocast).
BUILDER_VERSION = 2
SPECIAL_TOKENS = ["<pad>", "<s>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]

# Assistant turns sit inside {% generation %} so that TRL's assistant-only loss can find them;
# the end-of-turn token is the EOS that stops generation in transformers and vLLM alike.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|assistant|>\\n' }}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that determines the demo model's bytes; its hash keys the cache."""

    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 704
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    corpus_dialogues: int = 12000
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 300
    lr: float = 3e-3
    warmup: int = 20
    seed: int = 1234
    threads: int = 2
    extra: dict[str, Any] = field(default_factory=dict)

    def digest(self) -> str:
        """Hash of the recipe, the builder version, the chat template and the corpus text."""
        h = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        h.update(f"builder-{BUILDER_VERSION}".encode())
        h.update(CHAT_TEMPLATE.encode())
        for d in corpus.dialogues(self.corpus_dialogues, self.seed):
            h.update(render(d).encode())
        return h.hexdigest()


@dataclass
class BuildResult:
    path: Path
    cached: bool
    seconds: float
    parameters: int
    bytes_on_disk: int
    final_loss: float | None


def render(messages: list[dict[str, str]]) -> str:
    """The chat template in plain Python, used to write the pretraining corpus quickly."""
    out = []
    for m in messages:
        out.append(f"<|{m['role']}|>\n{m['content']}<|end|>\n")
    return "".join(out)


def is_built(out: Path, recipe: DemoRecipe | None = None) -> bool:
    recipe = recipe or DemoRecipe()
    marker = out / RECIPE_FILE
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("digest") == recipe.digest()
    except (OSError, ValueError):
        return False


def _train_tokenizer(texts: list[str], recipe: DemoRecipe):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="<pad>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
        model_max_length=recipe.max_position_embeddings,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _batches(ids: list[int], recipe: DemoRecipe, rng: random.Random):
    import torch

    window = recipe.seq_len + 1
    n = (len(ids) - 1) // window
    chunks = torch.tensor(ids[: n * window], dtype=torch.long).view(n, window)
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for i in range(0, n - recipe.batch_size + 1, recipe.batch_size):
            yield chunks[order[i : i + recipe.batch_size]]


def _pretrain(model, ids: list[int], recipe: DemoRecipe, progress: Callable[[int, float], None]):
    import torch

    rng = random.Random(recipe.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95), weight_decay=0.01)

    def lr_at(step: int) -> float:
        if step < recipe.warmup:
            return (step + 1) / recipe.warmup
        t = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    loss_value = float("nan")
    # fp32, not bf16 autocast: the weights then differ between CPUs only by fp32 rounding (bf16
    # kernels differ by CPU family, and so did the adapters trained on the result), and CPUs
    # without bf16 instructions (AVX2 only) run bf16 matmuls ~20x slower than fp32.
    for step, batch in zip(range(recipe.steps), _batches(ids, recipe, rng), strict=False):
        out = model(input_ids=batch[:, :-1], labels=batch[:, :-1].clone())
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        loss_value = out.loss.item()
        progress(step + 1, loss_value)
    model.eval()
    return loss_value


# The recipe fields that are LlamaConfig fields of the same name.
SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings")


def llama_config(shape: dict[str, int], tokenizer: Any, **extra: Any):
    """A Llama config from a shape (``SHAPE_FIELDS``) and a tokenizer's special tokens (also
    used by the benchmark's larger random-weight model)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        **shape,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def build(
    out: Path | str,
    recipe: DemoRecipe | None = None,
    force: bool = False,
    progress: Callable[[int, float], None] | None = None,
) -> BuildResult:
    """Build the demo model into `out` (reusing it when its recipe hash matches)."""
    out = Path(out)
    recipe = recipe or DemoRecipe()
    key = recipe.digest()[:32]
    if not force and (is_built(out, recipe)
                      or (build_store.restore(STORE_KIND, key, out) and is_built(out, recipe))):
        build_store.keep(STORE_KIND, key, out)  # a no-op once it is there
        meta = json.loads((out / RECIPE_FILE).read_text())
        return BuildResult(out, True, 0.0, meta["parameters"], _disk_bytes(out), meta.get("loss"))

    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    started = time.perf_counter()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    try:
        texts = [render(d) for d in corpus.dialogues(recipe.corpus_dialogues, recipe.seed)]
        tokenizer = _train_tokenizer(texts, recipe)
        ids: list[int] = []
        for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            ids.append(tokenizer.bos_token_id)
            ids.extend(encoded)

        config = llama_config({n: getattr(recipe, n) for n in SHAPE_FIELDS}, tokenizer)
        model = LlamaForCausalLM(config)
        loss = _pretrain(model, ids, recipe, progress or (lambda step, loss: None))

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            GenerationConfig(
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                do_sample=False,
            ).save_pretrained(tmp)
            n_params = sum(p.numel() for p in model.parameters())
            (tmp / RECIPE_FILE).write_text(json.dumps(
                {"digest": recipe.digest(), "recipe": asdict(recipe), "parameters": n_params,
                 "loss": loss, "corpus_tokens": len(ids)}, indent=2))
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        torch.set_num_threads(threads_before)
    build_store.keep(STORE_KIND, key, out)
    seconds = time.perf_counter() - started
    log.info("built demo base model in %.1fs at %s (loss %.3f)", seconds, out, loss)
    return BuildResult(out, False, seconds, n_params, _disk_bytes(out), loss)


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
