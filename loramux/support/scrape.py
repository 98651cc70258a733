"""A server's `/metrics` text, read by the tests and the benchmarks: one series by name (and
labels), where a name the text does not declare is an error, never a 0.

A reader that answered 0 for a missing series made `metric("a_misspelt_gauge") == 0` true
whatever the server did; here only a declared series can be 0 (a labelled counter that has
not counted yet, or no sample with the labels asked for).
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

# The sample names a family declares besides its own, by type (prometheus_client's text format).
_SUFFIXES = {"counter": ("_total", "_created"),
             "histogram": ("_bucket", "_count", "_sum", "_created"),
             "summary": ("_count", "_sum", "_created"), "info": ("_info",)}


class UnknownMetric(AssertionError):
    """The name (or a label) asked for is not in the `/metrics` text."""


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 if none does);
    UnknownMetric if `text` declares no series `name`, or its samples have no such label."""
    declared: set[str] = set()
    label_names: set[str] = set()
    total = 0.0
    for family in text_string_to_metric_families(text):
        suffixes = _SUFFIXES.get(family.type, ("",))  # a gauge's samples take its name
        declared.update(family.name + suffix for suffix in suffixes)
        for sample in family.samples:
            declared.add(sample.name)
            if sample.name != name:
                continue
            label_names.update(sample.labels)
            if all(sample.labels.get(k) == str(v) for k, v in labels.items()):
                total += sample.value
    if name not in declared:
        raise UnknownMetric(f"{name} is not in /metrics (it declares {len(declared)} series)")
    if label_names and not set(labels) <= label_names:
        raise UnknownMetric(f"{name} has no label {sorted(set(labels) - label_names)}; "
                            f"its labels: {sorted(label_names)}")
    return total
