"""``loramux registry promote``: eval-gated alias moves from the shell (registered by cli.py).

Exit codes: 0 promoted (or already there), 10 gate failed (one line with both scores; the
result is recorded, the alias stays), 11 the server could not run the eval set, and the
registry's own codes otherwise (4: the alias moved meanwhile, 5: bad input, 3: not found).
"""

from __future__ import annotations

from pathlib import Path

import typer

from loramux import registry as reg
from loramux.registry import render
from loramux.registry.cli import _emit_json, verb
from loramux.registry.errors import InvalidRequest
from loramux.registry.evaluation import BUILTIN_SCORERS, GateFailed, load_eval_set
from loramux.registry.promote import DEFAULT_CONCURRENCY, ENV_API_KEY, Gate, promote, summary
from loramux.registry.refs import AdapterRef


def gate_from_options(min_exact: float | None, min_score: float | None, scorer: str | None,
                      max_regression: float) -> Gate:
    """``--min-exact X`` (exact match), or ``--min-score X`` with ``--scorer``; one of them."""
    if (min_exact is None) == (min_score is None):
        raise InvalidRequest("give one threshold: --min-exact X, or --min-score X with --scorer")
    if min_exact is not None:
        if scorer not in (None, "exact"):
            raise InvalidRequest("--min-exact gates on exact match; use --min-score with "
                                 f"--scorer {scorer}")
        return Gate("exact", min_exact, max_regression)
    return Gate(scorer or "exact", min_score or 0.0, max_regression)


@verb("promote")
def promote_command(
    registry: reg.Registry,
    ref: str = typer.Argument(..., help="The candidate, pinned: NAME@V."),
    alias: str = typer.Option(..., "--alias", "-a", help="Alias to move if the gate passes."),
    eval_file: Path = typer.Option(..., "--eval", help="Chat JSONL; the last assistant turn of "
                                   "each record is the expected answer."),
    server: str = typer.Option(..., "--server", metavar="URL", help="A `loramux serve` that "
                               "reads this registry (http://host:port)."),
    min_exact: float | None = typer.Option(None, "--min-exact", min=0, max=1,
                                           help="Exact-match share the candidate must reach."),
    min_score: float | None = typer.Option(None, "--min-score", min=0, max=1,
                                           help="Mean --scorer score it must reach."),
    scorer: str | None = typer.Option(None, "--scorer", help=f"{'|'.join(BUILTIN_SCORERS)}|"
                                      "module:function (prediction, expected) -> 0..1."),
    max_regression: float = typer.Option(0.0, "--max-regression", min=0, max=1,
                                         help="How much worse than the current it may be."),
    api_key: str | None = typer.Option(None, "--api-key", envvar=ENV_API_KEY,
                                       help=f"The server's API key (env {ENV_API_KEY})."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", min=1, help="Per answer "
                                          "(default: the longest expected answer + 16)."),
    concurrency: int = typer.Option(DEFAULT_CONCURRENCY, "--concurrency", min=1, max=256),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Evaluate NAME@V and the alias's current version on a server; move the alias only if
    NAME@V passes the threshold and is not worse than the current by more than allowed."""
    gate = gate_from_options(min_exact, min_score, scorer, max_regression)
    eval_set = load_eval_set(eval_file)
    out = render.console()
    try:
        outcome = promote(registry, ref, alias, eval_set, server=server, gate=gate,
                          api_key=api_key, max_tokens=max_tokens, concurrency=concurrency)
    except GateFailed as exc:
        if as_json and exc.entry is not None:
            _emit_json({"promoted": False, "evaluation_id": exc.entry.id,
                        **exc.entry.evaluation.model_dump(mode="json")})
        raise
    if outcome.entry is None:
        out.print(f"{AdapterRef.parse(ref).name}:{alias} already points at {ref}; nothing to do")
        return
    evaluation = outcome.entry.evaluation
    if as_json:
        _emit_json({"promoted": True, "evaluation_id": outcome.entry.id,
                    **evaluation.model_dump(mode="json")})
        return
    assert outcome.pointer is not None
    name = outcome.pointer.name
    previous = f"@{evaluation.current.version}" if evaluation.current else "unset"
    out.print(f"promoted {name}@{outcome.pointer.version} to {name}:{alias} (was {previous}): "
              f"{summary(evaluation)}", markup=False, highlight=False)
