"""Release management from the shell: ``loramux registry promote``, ``loramux registry rollout
status`` and ``loramux rollout watch``.

The commands keep the names they had when they lived in the registry's CLI: ``loramux/cli.py``
mounts :data:`promote_command` and :data:`status_app` into ``loramux registry`` and
:data:`watch_app` as ``loramux rollout``. The registry verbs get the opened registry from the
registry group's ``--registry``/``--token`` (``registry.cli.verb``); errors become one line and
an exit code in the group that runs them (``loramux.cli_errors``), as every other command's.

Exit codes of ``promote``: 0 promoted (or already there), 10 gate failed (one line with both
scores; the result is recorded, the alias stays), 11 the server could not run the eval set, and
the registry's own codes otherwise (4: the alias moved meanwhile, 5: bad input, 3: not found).
Exit codes of ``rollout watch``: 0 the canary was judged and looks fine, 1 a rule fired (without
--auto-rollback), 12 no verdict: the canary never had --min-requests requests in the metrics.
"""

from __future__ import annotations

from pathlib import Path

import typer

from loramux import registry as reg
from loramux.cli_errors import ErrorLines
from loramux.registry import render
from loramux.registry.cli import REGISTRY_HELP, TOKEN_HELP, emit_json, verb
from loramux.registry.errors import InvalidRequest
from loramux.registry.evaluations import GateFailed
from loramux.registry.refs import AdapterRef
from loramux.release.evaluation import BUILTIN_SCORERS, load_eval_set
from loramux.release.promote import DEFAULT_CONCURRENCY, Gate, promote, summary
from loramux.release.rollout import (
    DEFAULT_INTERVAL_S,
    DEFAULT_MAX_ERROR_DELTA,
    DEFAULT_MAX_SCORE_DROP,
    DEFAULT_MIN_REQUESTS,
    RolloutStatus,
    Watcher,
    eval_scorer,
    rollout_status,
)
from loramux.wire import ENV_API_KEY, ENV_REGISTRY, ENV_TOKEN

NO_VERDICT = 12  # `rollout watch` ended without enough canary samples to judge it

status_app = typer.Typer(no_args_is_help=True, help="Weighted canaries: their live figures.")
watch_app = typer.Typer(cls=ErrorLines, no_args_is_help=True,
                        help="Watch a canary on the servers; roll it back when it does worse.")
SERVERS_HELP = "A `loramux serve` URL whose /metrics count this alias (repeat for each replica)."
API_KEY_HELP = (f"API key for the servers (env {ENV_API_KEY}): with --api-keys, their /metrics "
                "need an admin key without adapters= (unless --open-metrics).")


# -- loramux registry promote ------------------------------------------------------------------


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


@verb(group=None)
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
            emit_json({"promoted": False, "evaluation_id": exc.entry.id,
                       **exc.entry.evaluation.model_dump(mode="json")})
        raise
    if outcome.entry is None:
        out.print(f"{AdapterRef.parse(ref).name}:{alias} already points at {ref}; nothing to do")
        return
    evaluation = outcome.entry.evaluation
    if as_json:
        emit_json({"promoted": True, "evaluation_id": outcome.entry.id,
                   **evaluation.model_dump(mode="json")})
        return
    assert outcome.pointer is not None
    name = outcome.pointer.name
    previous = f"@{evaluation.current.version}" if evaluation.current else "unset"
    out.print(f"promoted {name}@{outcome.pointer.version} to {name}:{alias} (was {previous}): "
              f"{summary(evaluation)}", markup=False, highlight=False)


# -- loramux registry rollout status -----------------------------------------------------------


@verb("status", group=status_app)
def status(
    registry: reg.Registry, ref: str = typer.Argument(..., metavar="NAME:ALIAS"),
    server: list[str] = typer.Option(..., "--server", help=SERVERS_HELP),
    api_key: str | None = typer.Option(None, "--api-key", envvar=ENV_API_KEY,
                                       help=API_KEY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Traffic share, error rate and TTFT per version of NAME:ALIAS, from the servers."""
    found = rollout_status(registry, ref, server, api_key=api_key)
    if as_json:
        emit_json(found.as_dict())
        return
    render.console().print(render.canary_line(found.state))
    render.console().print(_table(found))


def _table(found: RolloutStatus) -> str:
    lines = [f"{'':8}{'version':>8}{'requests':>10}{'share':>8}{'errors':>9}{'TTFT mean':>11}"]
    for role, side in (("stable", found.stable), ("canary", found.canary)):
        if side is None:
            continue
        ttft = f"{side.ttft_mean * 1000:.0f} ms" if side.ttft_mean is not None else "-"
        lines.append(f"{role:8}{'@' + str(side.version):>8}{side.requests:>10.0f}"
                     f"{found.share(side):>8.1%}{side.error_rate:>9.1%}{ttft:>11}")
    return "\n".join(lines)


# -- loramux rollout watch ---------------------------------------------------------------------


@watch_app.command("watch")
def watch(
    ref: str = typer.Argument(..., metavar="NAME:ALIAS"),
    server: list[str] = typer.Option(..., "--server", help=SERVERS_HELP),
    eval_file: str | None = typer.Option(None, "--eval", metavar="FILE",
                                         help="Chat JSONL eval set, answered by both versions "
                                              "on the first --server each round."),
    scorer: str = typer.Option("exact", "--scorer",
                               help="exact, contains, json or module:function (as promote)."),
    auto_rollback: bool = typer.Option(False, "--auto-rollback",
                                       help="Set the canary's weight to 0 when a rule fires "
                                            "(else only report)."),
    max_error_delta: float = typer.Option(DEFAULT_MAX_ERROR_DELTA, "--max-error-delta", min=0.0,
                                          max=1.0,
                                          help="Roll back when the canary's error rate exceeds "
                                               "stable's by more than this (0.05 = 5 points)."),
    max_score_drop: float = typer.Option(DEFAULT_MAX_SCORE_DROP, "--max-score-drop", min=0.0,
                                         max=1.0,
                                         help="Roll back when the canary's eval score is below "
                                              "stable's by more than this."),
    min_requests: int = typer.Option(DEFAULT_MIN_REQUESTS, "--min-requests", min=1,
                                     help="Canary requests seen before its error rate counts."),
    interval: float = typer.Option(DEFAULT_INTERVAL_S, "--interval", min=0.1,
                                   help="Seconds between checks."),
    rounds: int | None = typer.Option(None, "--rounds", min=1,
                                      help="Stop after this many checks (default: until a "
                                           "rollback, or Ctrl-C)."),
    registry: str | None = typer.Option(None, "--registry", envvar=ENV_REGISTRY,
                                        metavar="PATH|URL", help=REGISTRY_HELP),
    token: str | None = typer.Option(None, "--token", envvar=ENV_TOKEN, help=TOKEN_HELP),
    api_key: str | None = typer.Option(None, "--api-key", envvar=ENV_API_KEY,
                                       help=API_KEY_HELP),
) -> None:
    """Watch NAME:ALIAS's canary; with --auto-rollback, set its weight to 0 (audit row
    'canary' with the reason) when its error rate or eval score falls behind stable's."""
    evaluate = (eval_scorer(server[0], eval_file, scorer, api_key=api_key)
                if eval_file else None)
    with reg.open(registry, token=token, create=False) as store:
        watcher = Watcher(store, ref, server, max_error_delta=max_error_delta,
                          max_score_drop=max_score_drop if evaluate else None,
                          evaluate=evaluate, auto_rollback=auto_rollback, interval=interval,
                          min_requests=min_requests, api_key=api_key)
        try:
            reason = watcher.run(rounds=rounds, report=typer.echo)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
    if reason is not None and not auto_rollback:
        raise typer.Exit(1)  # a script learns that the canary should go
    if reason is None and not watcher.judged:
        typer.echo(f"{ref}: no verdict: the canary never had --min-requests {min_requests} "
                   "requests in the metrics; do not promote on this watch", err=True)
        raise typer.Exit(NO_VERDICT)  # nothing seen is not "fine": never promote on it
