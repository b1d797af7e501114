"""Percentiles of samples and of Prometheus histograms."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from prometheus_client.parser import text_string_to_metric_families


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) with linear interpolation between closest ranks; None without samples."""
    if not sorted_values:
        return None
    if len(sorted_values) == 1:
        return sorted_values[0]
    rank = q * (len(sorted_values) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def summary(values: Iterable[float], digits: int = 4) -> dict[str, float | int | None]:
    """count, mean, p50, p95, p99, max; in the unit of the values."""
    ordered = sorted(values)

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, digits)

    return {
        "count": len(ordered),
        "mean": r(sum(ordered) / len(ordered)) if ordered else None,
        "p50": r(percentile(ordered, 0.50)),
        "p95": r(percentile(ordered, 0.95)),
        "p99": r(percentile(ordered, 0.99)),
        "max": r(ordered[-1]) if ordered else None,
    }


Buckets = dict[float, float]  # upper bound -> cumulative count


def histogram_buckets(metrics_text: str, name: str) -> Buckets:
    """The cumulative buckets of histogram `name` (summed over label sets) from a /metrics page."""
    buckets: Buckets = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return buckets


def counter_total(metrics_text: str, name: str) -> float:
    """The sum over label sets of counter `name` (its `_total` samples) from a /metrics page."""
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total


def bucket_delta(after: Mapping[float, float], before: Mapping[float, float]) -> Buckets:
    return {bound: count - before.get(bound, 0.0) for bound, count in after.items()}


def histogram_quantile(buckets: Mapping[float, float], q: float) -> float | None:
    """Like PromQL's histogram_quantile: linear interpolation inside the bucket holding the rank."""
    bounds = sorted(buckets)
    if not bounds:
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return previous_bound  # beyond the largest finite bucket: its bound is all we know
            if count == previous_count:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (count - previous_count)
        previous_bound, previous_count = bound, count
    return bounds[-1]
