"""The demo's safe-rollout steps: an eval-gated promotion, a canary rolled back, the web pages.

Each step runs the very command a user would type (echoed, then its output), against the demo's
registry and its running server, so the terminal shows the loop train -> register -> evaluate on
the serving stack -> canary -> roll back as it happens.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.text import Text

TASK = "codeword"  # the task whose alias is promoted, and whose eval set is the gate
ALIAS = "prod"


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def loramux(console: Console, *args: str | Path, ok: tuple[int, ...] = (0,)) -> int:
    """Run `loramux ARGS`, echoing the command and its output; returns the exit code."""
    words = [_shown(a) if isinstance(a, Path) else a for a in args]
    console.print(Text("$ loramux " + " ".join(words), style="bold cyan"))
    done = subprocess.run([sys.executable, "-m", "loramux.cli", *map(str, args)],
                          capture_output=True, text=True, check=False)
    output = (done.stdout + done.stderr).rstrip()
    if output:
        console.print(Text(output))
    if done.returncode not in ok:
        raise RuntimeError(f"`loramux {' '.join(words)}` exited {done.returncode}")
    return done.returncode


def gate_and_canary(client, url: str, registry: Path, adapters: dict[str, Path],
                    eval_file: Path, console: Console) -> None:
    """codeword@1 promoted to :prod through the gate; the caps adapter, published as a bad
    retrain (codeword@2), refused by the gate, then sent 30 % of traffic as a canary and rolled
    back by the watcher on its eval score."""
    from loramux.trainer.publish import publish_trained

    bad = publish_trained(adapters["caps"], TASK, registry)
    console.print(f"published a bad retrain: {bad.ref} (the caps adapter under the codeword name)")
    gate = ("--alias", ALIAS, "--eval", eval_file, "--server", url, "--min-exact", "0.8",
            "--registry", registry)
    loramux(console, "registry", "promote", f"{TASK}@1", *gate)
    loramux(console, "registry", "promote", f"{TASK}@{bad.version}", *gate, ok=(10,))

    console.rule("[bold]7. a canary, rolled back automatically")
    loramux(console, "registry", "alias", "set", TASK, ALIAS, "1", "--canary",
            f"{bad.version}:30%", "--registry", registry)
    question = [{"role": "user", "content": "What is the code word for the fox?"}]
    for i in range(20):  # 20 callers; each one sticks to the version it was given
        client.chat.completions.create(model=f"{TASK}:{ALIAS}", messages=question, max_tokens=8,
                                       temperature=0, user=f"caller-{i}")
    loramux(console, "registry", "rollout", "status", f"{TASK}:{ALIAS}", "--server", url,
            "--registry", registry)
    loramux(console, "rollout", "watch", f"{TASK}:{ALIAS}", "--server", url, "--eval", eval_file,
            "--auto-rollback", "--max-score-drop", "0.3", "--interval", "1", "--rounds", "3",
            "--registry", registry, ok=(0, 1))
    loramux(console, "registry", "log", "--name", TASK, "--registry", registry)


def pages(server_url: str, registry: Path, log: Path, console: Console) -> None:
    """Start `loramux registry serve` on the demo registry (read-only without a token, as the
    demo has no users) and print both pages' URLs; in a terminal, keep them up until Enter."""
    from loramux.support.launch import RegistryProcess

    console.rule("[bold]8. web pages")
    with console.status("starting `loramux registry serve`…"):
        registry_server = RegistryProcess(registry, log, ["--anonymous-read"])
        registry_url = registry_server.start()
    try:
        console.print(f"registry page: {registry_url}/ui  (adapters, versions, lineage, alias "
                      "history, eval results, canary state; read-only: --anonymous-read)")
        console.print(f"server page:   {server_url}/ui  (chat playground, two adapters side by "
                      "side, live per-adapter metrics)")
        if sys.stdin.isatty():
            console.input("[dim]press Enter to stop both servers[/dim] ")
    finally:
        registry_server.stop()
