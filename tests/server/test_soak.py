"""Long-running health: per-request state that must not outlive its request, and a soak of a
real server at twice its admission limit (memory flat, overload refused with 429 and never a
5xx, nothing left in flight at the end).

The soak runs the transformers reference engine on the demo base: the behaviour soaked here
(HTTP, admission, resolver, adapter leases, metrics) is the server's own and the same for every
engine, and the reference engine starts in seconds and answers short requests fast, where a vLLM
engine would spend the test's budget starting. `LORAMUX_SOAK_SECONDS` sets the duration (default
45); `loramux bench soak --minutes N` is the long variant.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from loramux.server.engines.base import GenerationRequest, Sampling


def test_reference_engine_keeps_no_state_for_ended_requests(demo_base: Path) -> None:
    """Item 10: aborts (of running, queued, finished and unknown requests) and consumers that
    go away leave nothing behind in the engine, and the engine keeps serving."""
    from loramux.server.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(demo_base, quantization="none", dtype="float32")

    def request(rid: str, tokens: int = 4) -> GenerationRequest:
        return GenerationRequest(rid, [1, 15, 20, 25], Sampling(max_tokens=tokens,
                                                                temperature=0.0))

    async def consume(rid: str) -> list[int]:
        return [t async for d in engine.generate(request(rid)) for t in d.token_ids]

    async def scenario() -> list[int]:
        finished = [await consume(f"done-{i}") for i in range(3)]
        assert all(finished), "greedy requests give tokens"
        for i in range(3):  # the handler's late abort after a request ended
            await engine.abort(f"done-{i}")
        for i in range(3):
            await engine.abort(f"never-seen-{i}")
        aborted = [asyncio.create_task(consume(f"aborted-{i}")) for i in range(6)]
        gone = [asyncio.create_task(consume(f"gone-{i}")) for i in range(6)]
        await asyncio.sleep(0)  # every task has queued its job
        for i in range(6):
            await engine.abort(f"aborted-{i}")
            gone[i].cancel()
        await asyncio.gather(*aborted, *gone, return_exceptions=True)
        # A bound, not a timing claim: a dead worker thread would otherwise hang the test.
        return await asyncio.wait_for(consume("after"), timeout=300)

    try:
        assert asyncio.run(scenario()), "the engine still serves after aborts and cancels"
        assert engine.requests_in_engine == 0, "state kept for requests that have ended"
    finally:
        engine.shutdown()


SOAK_SECONDS = float(os.environ.get("LORAMUX_SOAK_SECONDS", "45"))
ADMISSION = 4  # --max-pending: the soak's clients are twice this


def test_soak_at_twice_the_admission_limit(demo_base: Path, tmp_path: Path) -> None:
    from loramux.support.soak import soak, soak_server

    server, models = soak_server(demo_base, tmp_path, ADMISSION)
    url = server.start()
    try:
        result = soak(url, models, clients=2 * ADMISSION, seconds=SOAK_SECONDS,
                      pid=server.proc.pid)
    finally:
        server.stop()
    report = f"{result.statuses}\n{result.table()}"
    assert result.statuses[200] > 0, report
    assert result.statuses[429] > 0, f"twice the limit must be refused sometimes: {report}"
    assert not [s for s in result.statuses if s == "error" or int(s) >= 500], report
    assert result.in_flight_after == 0, f"requests left in flight: {report}"
    assert result.leases_after == 0, f"adapter leases left held: {report}"
    start, end = result.rss_after_warmup()
    assert result.rss_growth <= 0.05, (
        f"RSS grew {result.rss_growth:.1%} after warm-up ({start / 2**20:.0f} -> "
        f"{end / 2**20:.0f} MiB):\n{report}")
