"""Did the adapter learn? Eval loss (and exact match) of the base against the adapter, one line.

The rule, in one place (the CLI, the report, the lineage and the publish gate all use it):

* **learned** when the eval loss fell by at least ``min_eval_gain`` (relative, default 10 %) *and*,
  when exact match was measured, the adapter answers more eval prompts exactly than the base (or
  both answer all of them);
* **not learned** otherwise: the run ends with a warning and what to try, and ``--publish``
  refuses unless ``--force``;
* **not evaluated** when there was no eval data (``--no-eval``, or too few records to hold any
  out): nothing is claimed, and publishing is not gated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# What the README's Training recipe uses for the demo tasks; quoted in the warning.
RECIPE = "--max-steps 1000 --lr 2e-3 --compute-dtype float32"


@dataclass(frozen=True)
class Verdict:
    """The numbers behind the verdict; ``learned`` is None when nothing was measured."""

    learned: bool | None
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    min_eval_gain: float = 0.1
    exact_match_before: float | None = None
    exact_match_after: float | None = None
    exact_match_total: int = 0
    reason: str = ""  # why nothing was measured, or why exact match was not

    @property
    def loss_gain(self) -> float | None:
        """Relative fall of the eval loss (0.9 = 90 % lower than the base's)."""
        if self.eval_loss_before is None or self.eval_loss_after is None:
            return None
        if self.eval_loss_before <= 0:
            return 0.0
        return (self.eval_loss_before - self.eval_loss_after) / self.eval_loss_before

    def summary(self) -> str:
        """``eval loss 3.90 → 0.40, exact match 0 % → 97 %`` (or why nothing was measured)."""
        if self.eval_loss_before is None or self.eval_loss_after is None:
            return f"not evaluated: {self.reason}" if self.reason else "not evaluated"
        text = f"eval loss {self.eval_loss_before:.3g} → {self.eval_loss_after:.3g}"
        if self.exact_match_before is not None and self.exact_match_after is not None:
            text += (f", exact match {self.exact_match_before:.0%} → "
                     f"{self.exact_match_after:.0%} (of {self.exact_match_total})")
        return text

    def shortfall(self) -> str:
        """What fell short of the rule (empty when it learned or nothing was measured)."""
        if self.learned is not False:
            return ""
        problems = []
        gain = self.loss_gain or 0.0
        if gain < self.min_eval_gain - 1e-9:
            problems.append(f"eval loss fell {gain:.0%}, less than {self.min_eval_gain:.0%}")
        if not _exact_match_ok(self.exact_match_before, self.exact_match_after):
            problems.append("exact match is no higher than the base's")
        return "; ".join(problems)

    def line(self, steps: int | None = None, learning_rate: float | None = None) -> str:
        """The run's last line: the verdict, or a warning with what to try."""
        if self.learned is None:
            return (f"warning: {self.summary()}; nothing says whether the adapter learned "
                    "(give --eval FILE)")
        if self.learned:
            return f"{self.summary()}: the adapter learned"
        ran = ""
        if steps is not None and learning_rate is not None:
            ran = f" (this run: {steps} steps at lr {learning_rate:g})"
        return (f"warning: the adapter did not learn: {self.summary()} ({self.shortfall()}). "
                f"Try more steps (--max-steps) or a higher learning rate (--lr){ran}; "
                f"the README's recipe for the demo tasks is {RECIPE}")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["loss_gain"] = self.loss_gain
        data["summary"] = self.summary()
        return data


def _exact_match_ok(before: float | None, after: float | None) -> bool:
    if before is None or after is None:
        return True
    return after > before or (before >= 1.0 and after >= 1.0)


def judge(loss_before: float | None, loss_after: float | None, *, min_eval_gain: float,
          exact_match_before: float | None = None, exact_match_after: float | None = None,
          exact_match_total: int = 0, reason: str = "") -> Verdict:
    """The verdict for measured numbers (see the module docstring for the rule)."""
    if loss_before is None or loss_after is None:
        return Verdict(None, min_eval_gain=min_eval_gain, reason=reason or "no eval data")
    verdict = Verdict(None, loss_before, loss_after, min_eval_gain, exact_match_before,
                      exact_match_after, exact_match_total, reason)
    learned = (verdict.loss_gain or 0.0) >= min_eval_gain - 1e-9 and _exact_match_ok(
        exact_match_before, exact_match_after)
    return Verdict(learned, loss_before, loss_after, min_eval_gain, exact_match_before,
                   exact_match_after, exact_match_total, reason)


def from_report(report: dict[str, Any]) -> Verdict | None:
    """The verdict a training report recorded (None for reports written before verdicts)."""
    data = report.get("verdict")
    if not isinstance(data, dict):
        return None
    fields = {k: data.get(k) for k in ("learned", "eval_loss_before", "eval_loss_after",
                                       "exact_match_before", "exact_match_after")}
    return Verdict(**fields, min_eval_gain=float(data.get("min_eval_gain", 0.1)),
                   exact_match_total=int(data.get("exact_match_total") or 0),
                   reason=str(data.get("reason") or ""))


def refusal(verdict: Verdict | None) -> str | None:
    """Why ``--publish`` refuses this adapter (None: publish). Only a measured failure refuses."""
    if verdict is None or verdict.learned is not False:
        return None
    return (f"not published: the adapter is no better than the base on the eval set "
            f"({verdict.summary()}; {verdict.shortfall()}); train longer (--max-steps) or "
            "with a higher --lr, or pass --force to publish it anyway")
