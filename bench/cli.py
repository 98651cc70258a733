"""`loramux bench …`: the whole benchmark (`all`) or one part of it.

    loramux bench all [--quick]      every part; writes bench/results/<UTC timestamp>.{json,md,png}
    loramux bench serve              1+2: loramux vs vLLM's OpenAI server: K adapters, Zipf over
                                     many, mixed ranks; tokens/s against base, TTFT, tail TTFT
    loramux bench swap               3: cold adapter vs warm adapter vs base reload
    loramux bench naive              4: transformers + peft, one request at a time
    loramux bench real               R: base / K = 8 / K = 64 on a real pretrained model
                                     (SmolLM2-135M-Instruct), loramux vs vLLM's server
    loramux bench components         5: the registry's and the trainer's own benchmarks
    loramux bench registry|trainer   one of those two alone, its table printed
    loramux bench soak --minutes N   a server at twice its admission limit for N minutes:
                                     RSS over time, 429s, no 5xx, nothing left in flight
    loramux bench affinity           3 replicas sharing a registry: Zipf load routed round robin
                                     vs the gateway picker's LoRA-affinity rule (a test harness);
                                     adapter loads, cache hit rate, TTFT; not part of `all`
    loramux bench show [FILE]        print the tables of a results file (default: the latest)
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import typer

from loramux.bench import runner, workload
from loramux.bench.config import PARTS, BenchConfig, with_overrides

app = typer.Typer(help="Benchmarks: loramux side by side with vLLM's own server and a naive "
                       "transformers + peft loop, same load, same machine.",
                  no_args_is_help=True, pretty_exceptions_enable=False)

QUICK = typer.Option(False, "--quick", help="Every part at a tiny size (2-4 minutes); a "
                                            "smoke test, not a measurement.")
OUT = typer.Option(runner.RESULTS_DIR, "--out", help="Folder for <timestamp>.json/.md/.png.")
CACHE = typer.Option(workload.DEFAULT_CACHE, "--cache-dir",
                     help="Bench model and adapters (reused across runs) and scratch space.")
QUANT = typer.Option([], "--quantization", "-q",
                     help="bitsandbytes (NF4) or none; repeat to measure several (the first is "
                          "used for the hot-swap and naive parts). Default: bitsandbytes.")
TRIALS = typer.Option(None, "--trials", help="Trials per K and server (default 3; quick 2).")
REQUESTS = typer.Option(None, "--requests", help="Requests per uniform or Zipf trial (default "
                                                  "64; quick 8).")
DTYPE = typer.Option("auto", "--dtype", help="Compute dtype of every server and loop: auto "
                                             "(bfloat16 where the CPU has bf16 instructions, "
                                             "else float32), bfloat16 or float32.")


def _run(parts: tuple[str, ...], quick: bool, out: Path, cache: Path, quantization: list[str],
         trials: int | None, requests: int | None, dtype: str = "auto") -> None:
    # `loramux bench real --trials/--requests` sizes the real part; elsewhere the serve part
    sizes = ({"real_trials": trials, "real_requests": requests} if parts == ("real",)
             else {"trials": trials, "requests": requests})
    cfg = with_overrides(BenchConfig.preset(quick), quantizations=tuple(quantization) or None,
                         dtype=dtype, **sizes)
    args = " ".join(shlex.quote(a) for a in sys.argv[1:])
    # `loramux bench all ...` (argv holds `bench`) or `python -m loramux.bench.cli all ...`
    command = (f"loramux {args}" if Path(sys.argv[0]).name == "loramux"
               else f"python -m loramux.bench.cli {args}")
    try:
        results, _ = runner.run(cfg, parts, out_dir=out, cache=cache, command=command)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if results["errors"]:
        raise typer.Exit(1)


@app.command("all")
def all_parts(quick: bool = QUICK, out: Path = OUT, cache_dir: Path = CACHE,
              quantization: list[str] = QUANT, trials: int = TRIALS,
              requests: int = REQUESTS, dtype: str = DTYPE) -> None:
    """Every part in one run (what `make bench` runs)."""
    _run(PARTS, quick, out, cache_dir, quantization, trials, requests, dtype)


@app.command("serve")
def serve(quick: bool = QUICK, out: Path = OUT, cache_dir: Path = CACHE,
          quantization: list[str] = QUANT, trials: int = TRIALS,
          requests: int = REQUESTS, dtype: str = DTYPE) -> None:
    """Parts 1 and 2: loramux vs vLLM's server over K adapters, Zipf and mixed ranks."""
    _run(("serve",), quick, out, cache_dir, quantization, trials, requests, dtype)


@app.command("swap")
def swap(quick: bool = QUICK, out: Path = OUT, cache_dir: Path = CACHE,
         quantization: list[str] = QUANT, dtype: str = DTYPE) -> None:
    """Part 3: first token of a never-loaded adapter vs warm vs a base model reload."""
    _run(("swap",), quick, out, cache_dir, quantization, None, None, dtype)


@app.command("naive")
def naive(quick: bool = QUICK, out: Path = OUT, cache_dir: Path = CACHE,
          quantization: list[str] = QUANT, trials: int = TRIALS,
          requests: int = REQUESTS, dtype: str = DTYPE) -> None:
    """Part 4 with part 1 (for the ratio): a transformers + peft loop, one request at a time."""
    _run(("serve", "naive"), quick, out, cache_dir, quantization, trials, requests, dtype)


@app.command("real")
def real(quick: bool = QUICK, out: Path = OUT, cache_dir: Path = CACHE,
         quantization: list[str] = QUANT,
         trials: int = typer.Option(None, "--trials", help="Trials per mix and server "
                                                           "(default 2; quick 1)."),
         requests: int = typer.Option(None, "--requests", help="Requests per trial, at least "
                                                               "the largest K (default 64; "
                                                               "quick 8)."),
         dtype: str = DTYPE) -> None:
    """Part R: base, K = 8 and K = 64 on the real base (SmolLM2-135M-Instruct), both servers."""
    _run(("real",), quick, out, cache_dir, quantization, trials, requests, dtype)


@app.command("components")
def components(quick: bool = QUICK, out: Path = OUT, dtype: str = DTYPE) -> None:
    """Part 5: the registry's and the trainer's own benchmarks, in this run's report."""
    _run(("components",), quick, out, workload.DEFAULT_CACHE, [], None, None, dtype)


@app.command("registry")
def registry(quick: bool = QUICK, as_json: bool = typer.Option(False, "--json")) -> None:
    """The registry alone: resolve latency (local, HTTP) and push/pull against a plain copy."""
    from loramux.bench import registry_bench

    results = registry_bench.run(quick=quick, show=not as_json)
    if as_json:
        typer.echo(json.dumps(results, indent=2))


@app.command("trainer")
def trainer(quick: bool = QUICK, as_json: bool = typer.Option(False, "--json")) -> None:
    """The trainer alone: `loramux train` vs a plain transformers + peft loop."""
    from loramux.bench import trainer_bench

    result = trainer_bench.run(quick=quick)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        trainer_bench.print_table(result)


@app.command("soak")
def soak(minutes: float = typer.Option(10.0, "--minutes", min=0.5, help="Length of the load."),
         engine: str = typer.Option("transformers", "--engine",
                                    help="transformers (the reference engine) or vllm."),
         admission: int = typer.Option(4, "--admission", min=1,
                                       help="The server's --max-pending; clients are twice."),
         out: Path = OUT) -> None:
    """The soak test's long variant: RSS over time; exit 1 when a verdict fails."""
    from loramux.bench import soak as soak_bench

    if engine not in ("transformers", "vllm"):
        raise typer.BadParameter("--engine is transformers or vllm")
    report = soak_bench.run(minutes, engine, admission, out)
    typer.echo(report["table"])
    typer.echo(f"{report['requests']} requests {report['statuses']}; RSS "
               f"{report['rss_after_warmup_mib']} -> {report['rss_end_mib']} MiB after warm-up "
               f"({report['rss_growth']:+.1%})")
    for name, ok in report["verdicts"].items():
        typer.echo(f"  {'ok  ' if ok else 'FAIL'} {name}")
    if not all(report["verdicts"].values()):
        raise typer.Exit(1)


@app.command("affinity")
def affinity(engine: str = typer.Option("vllm", "--engine",
                                        help="vllm, or transformers (the reference engine)."),
             requests: int = typer.Option(300, "--requests", min=1),
             adapters: int = typer.Option(30, "--adapters", min=1),
             slots: int = typer.Option(10, "--slots", min=1,
                                       help="Adapters each replica keeps (--max-cpu-loras)."),
             concurrency: int = typer.Option(8, "--concurrency", min=1),
             out: Path = OUT, cache_dir: Path = CACHE) -> None:
    """Affinity: round robin vs the endpoint picker's LoRA-affinity rule over 3 replicas."""
    from loramux.bench import affinity as affinity_bench

    if engine not in ("transformers", "vllm"):
        raise typer.BadParameter("--engine is transformers or vllm")
    cfg = affinity_bench.AffinityConfig(engine=engine, requests=requests, adapters=adapters,
                                        slots=slots, concurrency=concurrency)
    command = "loramux " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    results, path = affinity_bench.run(cfg, out, cache_dir, command=command)
    typer.echo(path.with_suffix(".md").read_text())
    typer.echo(f"wrote {path}")
    if not all(r["ok"] for r in results["routings"].values()):
        raise typer.Exit(1)


@app.command("show")
def show(path: Path = typer.Argument(None, help="A results JSON (default: the latest)."),
         out: Path = OUT) -> None:
    """Print the tables of a results file."""
    from loramux.bench import report

    if path is None:
        found = sorted(out.glob("*.json"))
        if not found:
            raise typer.BadParameter(f"no results in {out}")
        path = found[-1]
    report.print_tables(json.loads(path.read_text()))


if __name__ == "__main__":
    app()
