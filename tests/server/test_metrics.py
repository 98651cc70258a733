"""Per-adapter metric labels stay bounded however many adapters a server sees."""

from __future__ import annotations

from prometheus_client import generate_latest

from loramux.server.metrics import BASE, OTHER, Metrics


def test_adapter_labels_are_capped() -> None:
    metrics = Metrics(max_adapter_labels=3)
    labels = [metrics.label(f"adapter-{i}") for i in range(1000)]
    assert labels[:3] == ["adapter-0", "adapter-1", "adapter-2"]
    assert set(labels[3:]) == {OTHER}
    assert metrics.label("adapter-1") == "adapter-1" and metrics.label(None) == BASE
    for label in labels:
        metrics.requests.labels("chat", label, "200", "").inc()
    text = generate_latest(metrics.registry).decode()
    series = [line for line in text.splitlines() if line.startswith("loramux_requests_total{")]
    assert len(series) == 4
    assert f'adapter="{OTHER}",endpoint="chat",status="200",version=""}} 997.0' in text
