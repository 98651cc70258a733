"""Release management: deciding which adapter version serves.

- evaluation.py: eval sets (chat JSONL) and scorers;
- promote.py: the eval gate: a candidate and the alias's current version answer the eval set on
  the serving stack, and the alias moves only if the candidate passes (``registry promote``);
- rollout.py: a weighted canary's health, scraped from the servers' metrics, and the rule that
  rolls it back (``registry rollout status``, ``rollout watch``);
- cli.py: those commands, mounted by ``loramux/cli.py`` under their usual names.

Everything here calls out to serving endpoints, which the registry never does: it reads and
writes only through the Registry API (``loramux.registry.open``), and never imports the server,
the trainer, the demo or the benchmarks. The trainer may import it (``train --gate-eval``).
"""
