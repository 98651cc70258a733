"""A canary's health, read from the servers that serve it, and the rule that rolls it back.

Each ``loramux serve`` counts requests and time to first token per adapter *version*
(``loramux_requests_total{adapter, version, status}``,
``loramux_time_to_first_token_seconds{adapter, version}``, named in ``loramux.wire``); this
module scrapes those series from every server given, sums them per version, and compares the
canary with its stable version. What counts as an error is ``wire.is_error``, the rule the
server's playground shows too.

The watcher (``loramux rollout watch``) runs outside the registry on purpose: it needs the
serving stack (metrics, and the eval set answered by the same engine and quantization as
production), which the registry does not know about, and the registry stays a store that never
calls out. Its one write is through the registry API: ``canary_set(..., weight=0, reason=...)``,
an audit row ``canary`` like any other change. Where the split is stored: registry/canary.py;
where each request picks its side: server/resolver.py (``choose``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loramux.registry.base import Registry
from loramux.registry.canary import CanaryState
from loramux.registry.errors import InvalidName, RemoteError
from loramux.registry.manifest import Manifest
from loramux.wire import REQUESTS, TTFT, counted, is_error

log = logging.getLogger(__name__)
DEFAULT_MIN_REQUESTS = 20  # a canary's error rate is not judged on fewer requests
DEFAULT_MAX_ERROR_DELTA = 0.05  # 5 points more errors than stable
DEFAULT_MAX_SCORE_DROP = 0.1  # with an eval set: 0.1 below stable's score
DEFAULT_INTERVAL_S = 10.0


@dataclass
class VersionStats:
    """One version's counts, summed over servers. Errors are answers other than 2xx; refusals
    before any work (429) and clients gone (499) say nothing about the version and are not
    counted. A malformed request fails on either side alike, so the *difference* of the two
    error rates is what the rollback rule judges."""

    version: int
    requests: float = 0.0  # answered, 429 and 499 apart
    errors: float = 0.0
    ttft_sum: float = 0.0
    ttft_count: float = 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def ttft_mean(self) -> float | None:
        return self.ttft_sum / self.ttft_count if self.ttft_count else None

    def since(self, before: VersionStats | None) -> VersionStats:
        """The counts added after ``before`` (a server restart resets them: then all)."""
        if before is None or self.requests < before.requests:
            return self
        return VersionStats(self.version, self.requests - before.requests,
                            self.errors - before.errors, self.ttft_sum - before.ttft_sum,
                            self.ttft_count - before.ttft_count)


def parse_metrics(text: str, adapter: str) -> dict[int, VersionStats]:
    """Per version of ``adapter``: its counts in one server's ``/metrics`` text."""
    out: dict[int, VersionStats] = {}

    def stats(labels: dict[str, str]) -> VersionStats | None:
        version = labels.get("version", "")
        if labels.get("adapter") != adapter or not version.isdigit():
            return None
        return out.setdefault(int(version), VersionStats(int(version)))

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == REQUESTS and (s := stats(sample.labels)):
                status = sample.labels.get("status", "")
                if not counted(status):
                    continue
                s.requests += sample.value
                if is_error(status):
                    s.errors += sample.value
            elif sample.name == f"{TTFT}_sum" and (s := stats(sample.labels)):
                s.ttft_sum += sample.value
            elif sample.name == f"{TTFT}_count" and (s := stats(sample.labels)):
                s.ttft_count += sample.value
    return out


def scrape(servers: list[str], adapter: str, *, api_key: str | None = None,
           timeout: float = 10.0) -> dict[int, VersionStats]:
    """``adapter``'s per-version counts summed over ``servers``. Raises RemoteError for a
    server that cannot be read (a partial sum would skew the comparison)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    total: dict[int, VersionStats] = {}
    for url in servers:
        try:
            response = httpx.get(f"{url.rstrip('/')}/metrics", headers=headers, timeout=timeout)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot read the metrics of {url}: {exc}") from None
        for version, s in parse_metrics(response.text, adapter).items():
            t = total.setdefault(version, VersionStats(version))
            t.requests += s.requests
            t.errors += s.errors
            t.ttft_sum += s.ttft_sum
            t.ttft_count += s.ttft_count
    return total


@dataclass
class RolloutStatus:
    """``loramux registry rollout status``: the split, and each side's live figures."""

    state: CanaryState
    stable: VersionStats
    canary: VersionStats | None

    def share(self, side: VersionStats | None) -> float:
        total = self.stable.requests + (self.canary.requests if self.canary else 0.0)
        return side.requests / total if side is not None and total else 0.0

    def as_dict(self) -> dict[str, Any]:
        def row(s: VersionStats | None) -> dict[str, Any] | None:
            if s is None:
                return None
            return {"version": s.version, "requests": s.requests, "share": self.share(s),
                    "error_rate": s.error_rate, "ttft_mean_s": s.ttft_mean}

        return {"ref": f"{self.state.name}:{self.state.alias}",
                "weight": self.state.weight, "stable": row(self.stable),
                "canary": row(self.canary)}


def split_ref(ref: str) -> tuple[str, str]:
    name, sep, alias = ref.partition(":")
    if not sep or not name or not alias:
        raise InvalidName(f"expected NAME:ALIAS (e.g. codeword:prod), not {ref!r}")
    return name, alias


def rollout_status(registry: Registry, ref: str, servers: list[str], *,
                   api_key: str | None = None) -> RolloutStatus:
    name, alias = split_ref(ref)
    state = registry.canary(name, alias)
    counts = scrape(servers, name, api_key=api_key)
    stable = counts.get(state.stable, VersionStats(state.stable))
    canary = None if state.canary is None else counts.get(state.canary,
                                                         VersionStats(state.canary))
    return RolloutStatus(state, stable, canary)


# -- the rollback rule ---------------------------------------------------------------------------


def error_verdict(stable: VersionStats, canary: VersionStats, max_error_delta: float,
                  min_requests: int = DEFAULT_MIN_REQUESTS) -> str | None:
    """Why the canary must go, by error rate, or None while it may stay."""
    if canary.requests < min_requests:
        return None
    delta = canary.error_rate - stable.error_rate
    if delta > max_error_delta:
        return (f"canary @{canary.version} error rate {canary.error_rate:.1%} exceeds stable "
                f"@{stable.version}'s {stable.error_rate:.1%} by {delta:.1%} "
                f"(> {max_error_delta:.1%}, {canary.requests:.0f} requests)")
    return None


def score_verdict(stable_version: int, stable_score: float, canary_version: int,
                  canary_score: float, max_score_drop: float) -> str | None:
    """Why the canary must go, by eval score, or None while it may stay."""
    drop = stable_score - canary_score
    if drop > max_score_drop:
        return (f"canary @{canary_version} eval score {canary_score:.3f} is {drop:.3f} below "
                f"stable @{stable_version}'s {stable_score:.3f} (> {max_score_drop:.3f})")
    return None


# -- the watcher ---------------------------------------------------------------------------------

Scorer = Callable[[Manifest, Manifest], tuple[float, float]]  # (stable, canary) -> scores


def eval_scorer(server: str, eval_file: str, scorer: str = "exact", *,
                api_key: str | None = None, timeout: float = 300.0) -> Scorer:
    """Scores of two pinned versions on ``server`` over the eval set, with the eval gate's own
    loader, client, runner and scorers (``loramux registry promote``): the same numbers it
    would see."""
    from loramux.release.evaluation import load_eval_set, load_scorer, score_answers
    from loramux.release.promote import client, default_max_tokens, run_prompts

    eval_set, score = load_eval_set(eval_file), load_scorer(scorer)  # bad input fails first
    tokens = default_max_tokens(eval_set.items)
    openai_client = client(server, api_key, timeout=timeout)

    def one(manifest: Manifest) -> float:
        answers = run_prompts(openai_client, manifest, eval_set.items, max_tokens=tokens)
        return score_answers(score, scorer, answers, eval_set.items)[0]

    return lambda stable, canary: (one(stable), one(canary))


@dataclass
class Watcher:
    """Polls the servers every ``interval`` s; with ``auto_rollback``, sets the canary's weight
    to 0 (through the registry, with the reason) the first time a rule fires."""

    registry: Registry
    ref: str
    servers: list[str]
    max_error_delta: float = DEFAULT_MAX_ERROR_DELTA
    max_score_drop: float | None = None
    evaluate: Scorer | None = None  # scores of two pinned refs on the serving stack
    auto_rollback: bool = False
    interval: float = DEFAULT_INTERVAL_S
    min_requests: int = DEFAULT_MIN_REQUESTS
    api_key: str | None = None
    _baseline: dict[int, VersionStats] | None = None
    canary_seen: VersionStats | None = None  # the canary's counts since watching began
    judged: bool = False  # a round saw at least `min_requests` canary requests

    def check(self) -> tuple[CanaryState, str | None]:
        """One round: (the alias's state, why the canary must go or None)."""
        name, alias = split_ref(self.ref)
        state = self.registry.canary(name, alias)
        if not state.active:
            return state, None
        assert state.canary is not None
        counts = scrape(self.servers, name, api_key=self.api_key)
        if self._baseline is None:  # judge what happens while watching, not the past
            self._baseline = counts
            counts = {}
        stable = counts.get(state.stable, VersionStats(state.stable)).since(
            self._baseline.get(state.stable))
        canary = counts.get(state.canary, VersionStats(state.canary)).since(
            self._baseline.get(state.canary))
        self.canary_seen = canary
        self.judged = self.judged or canary.requests >= self.min_requests
        reason = error_verdict(stable, canary, self.max_error_delta, self.min_requests)
        if reason is None and self.evaluate is not None and self.max_score_drop is not None:
            s_score, c_score = self.evaluate(self.registry.resolve(f"{name}@{state.stable}"),
                                             self.registry.resolve(f"{name}@{state.canary}"))
            log.info("%s: eval stable @%d %.3f, canary @%d %.3f", self.ref, state.stable,
                     s_score, state.canary, c_score)
            reason = score_verdict(state.stable, s_score, state.canary, c_score,
                                   self.max_score_drop)
        return state, reason

    def _has_data(self) -> bool:
        return self.canary_seen is not None and self.canary_seen.requests >= self.min_requests

    def _no_data(self, state: CanaryState) -> str:
        """No verdict: too few canary samples is not a healthy canary."""
        seen = self.canary_seen.requests if self.canary_seen is not None else 0
        return (f"{self.ref}: no verdict on canary @{state.canary} at {state.weight:.0%}: "
                f"{seen:.0f} of the {self.min_requests} requests it needs in the servers' "
                "metrics since the watch began (no traffic yet, or its series fall into "
                "`__other__` on a server out of adapter labels: see --max-adapter-labels)")

    def rollback(self, state: CanaryState, reason: str) -> CanaryState:
        log.warning("rolling back %s: %s", self.ref, reason)
        return self.registry.canary_set(state.name, state.alias, state.stable, state.canary,
                                        0.0, reason=f"auto-rollback: {reason}")

    def run(self, *, rounds: int | None = None, stop: threading.Event | None = None,
            report: Callable[[str], None] = log.info) -> str | None:
        """Watch until a rollback (returns its reason), ``rounds`` checks, or ``stop``."""
        stop = stop or threading.Event()
        done = 0
        while not stop.is_set():
            state, reason = self.check()
            done += 1
            if reason is not None:
                report(f"{self.ref}: {reason}")
                if self.auto_rollback:
                    self.rollback(state, reason)
                    report(f"{self.ref}: canary @{state.canary} set to weight 0")
                    return reason
            elif state.active and not self._has_data():
                report(self._no_data(state))
            elif state.active:
                report(f"{self.ref}: canary @{state.canary} at {state.weight:.0%} looks fine")
            else:
                report(f"{self.ref}: no active canary")
            if rounds is not None and done >= rounds:
                return None
            stop.wait(self.interval)
        return None
