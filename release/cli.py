"""``loramux registry alias set … --canary``, ``loramux registry rollout status`` and
``loramux rollout watch``: weighted canaries from the shell.

Registered from ``registry/cli.py`` (the registry verbs) and ``loramux/cli.py`` (``rollout``);
errors become one line and an exit code in the registry CLI's group, as every other verb.
"""

from __future__ import annotations

import typer

from loramux import registry as reg
from loramux.registry import render
from loramux.registry.canary import CanaryState, parse_spec
from loramux.registry.cli import REGISTRY_HELP, TOKEN_HELP, _emit_json, _Group, alias_app, app, verb
from loramux.registry.rollout import RolloutStatus, Watcher, eval_scorer, rollout_status

rollout_app = typer.Typer(no_args_is_help=True, help="Weighted canaries: their live figures.")
app.add_typer(rollout_app, name="rollout")
watch_app = typer.Typer(cls=_Group, no_args_is_help=True,
                        help="Watch a canary on the servers; roll it back when it does worse.")
SERVERS_HELP = "A `loramux serve` URL whose /metrics count this alias (repeat for each replica)."
API_KEY_HELP = "API key for the servers (env LORAMUX_API_KEY), if their /metrics need one."


def describe(state: CanaryState) -> str:
    line = f"{state.name}:{state.alias} -> {state.name}@{state.stable}  {state.stable_digest}"
    if state.canary is not None:
        line += f"\n  canary {state.name}@{state.canary} at {state.weight:.4g}"
        line += f" ({state.weight:.1%})" + ("" if state.weight else " (rolled back)")
    return line


@verb("set", group=alias_app)
def alias_set(
    registry: reg.Registry, name: str, alias: str, version: int = typer.Argument(..., min=1),
    canary: str | None = typer.Option(
        None, "--canary", metavar="V:WEIGHT",
        help="Also send WEIGHT of the alias's requests to version V: 5:10% or 5:0.1 (sticky "
             "per user). Without it the move is plain and ends any canary."),
) -> None:
    """Point NAME:ALIAS at VERSION (recorded in the audit log)."""
    if canary is None:
        pointer = registry.alias_set(name, alias, version)
        render.console().print(f"{name}:{alias} -> {name}@{pointer.version}  {pointer.digest}")
        return
    canary_version, weight = parse_spec(canary)
    render.console().print(describe(registry.canary_set(name, alias, version, canary_version,
                                                        weight)))


@verb("status", group=rollout_app)
def status(
    registry: reg.Registry, ref: str = typer.Argument(..., metavar="NAME:ALIAS"),
    server: list[str] = typer.Option(..., "--server", help=SERVERS_HELP),
    api_key: str | None = typer.Option(None, "--api-key", envvar="LORAMUX_API_KEY",
                                       help=API_KEY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Traffic share, error rate and TTFT per version of NAME:ALIAS, from the servers."""
    found = rollout_status(registry, ref, server, api_key=api_key)
    if as_json:
        _emit_json(found.as_dict())
        return
    render.console().print(describe(found.state))
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
    max_error_delta: float = typer.Option(0.05, "--max-error-delta", min=0.0, max=1.0,
                                          help="Roll back when the canary's error rate exceeds "
                                               "stable's by more than this (0.05 = 5 points)."),
    max_score_drop: float = typer.Option(0.1, "--max-score-drop", min=0.0, max=1.0,
                                         help="Roll back when the canary's eval score is below "
                                              "stable's by more than this."),
    min_requests: int = typer.Option(20, "--min-requests", min=1,
                                     help="Canary requests seen before its error rate counts."),
    interval: float = typer.Option(10.0, "--interval", min=0.1, help="Seconds between checks."),
    rounds: int | None = typer.Option(None, "--rounds", min=1,
                                      help="Stop after this many checks (default: until a "
                                           "rollback, or Ctrl-C)."),
    registry: str | None = typer.Option(None, "--registry", envvar=reg.ENV_REGISTRY,
                                        metavar="PATH|URL", help=REGISTRY_HELP),
    token: str | None = typer.Option(None, "--token", envvar="LORAMUX_TOKEN", help=TOKEN_HELP),
    api_key: str | None = typer.Option(None, "--api-key", envvar="LORAMUX_API_KEY",
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
