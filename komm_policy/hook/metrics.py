"""Prometheus metrics for the hook service, in a registry owned by one app instance.

What every answered hook request counts (requests by stage/action/rule, latency, fallbacks,
lookups, their errors and timings) is kept in plain dicts under one lock and turned into
metric families when scraped (`_DecisionCounts`): prometheus_client's `inc`/`observe` take
a lock and validate their argument on every call, and a decision with four lookups made
seven of them — about 5 µs a request, as much as spooling its decision record.  The
exposition is the same (counter `_total` samples, cumulative histogram buckets).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from ..decision import Decision

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5)
_LOOKUP_BUCKETS = (0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25,
                   0.5, 1.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rejected_requests = Counter("komm_hook_bad_requests",
                                         "Hook requests refused before evaluation",
                                         ("status",), registry=r)
        self._counts = _DecisionCounts()
        r.register(self._counts)
        self.reloads = Counter("komm_policy_reloads", "Policy reloads", ("result",),
                               registry=r)
        self.rules = Gauge("komm_policy_rules", "Rules in the active policy set", registry=r)
        self.log_depth = Gauge("komm_decision_log_queue_depth",
                               "Decision records waiting to be written", registry=r)
        self.log_depth.set_function(lambda: 0.0)  # the service sets the real source
        self.body_bytes_held = Gauge(
            "komm_hook_body_bytes_held", "Bytes of request bodies being read or decided, "
            "counted against max_body_buffer_bytes", registry=r)
        self.body_bytes_held.set_function(lambda: 0.0)  # the app sets the real source
        self.directory_bad_rows = Gauge(
            "komm_directory_bad_rows", "Directory rows skipped because they do not fit the "
            "schema (since start)", registry=r)
        self.directory_refresh_errors = Gauge(
            "komm_directory_refresh_errors", "Failed refreshes of the directory replica "
            "(since start)", ("kind",), registry=r)
        self.directory_age = Gauge(
            "komm_directory_age_seconds", "Seconds since the replica last read its store",
            registry=r)

    def watch_directory(self, directory: object) -> None:
        """Report a replica's `health` (bad rows, refresh errors) and `age`."""
        health = getattr(directory, "health", None)
        if health is not None:
            self.directory_bad_rows.set_function(lambda: float(sum(health.bad_rows.values())))
            self.directory_refresh_errors.labels("all").set_function(
                lambda: float(health.refresh_errors))
            self.directory_refresh_errors.labels("unexpected").set_function(
                lambda: float(health.unexpected_errors))
        age = getattr(directory, "age", None)
        if age is not None:
            self.directory_age.set_function(lambda: float(directory.age))  # type: ignore[attr-defined]

    def observe(self, decision: Decision, seconds: float) -> None:
        """Count one answered request: its decision and `seconds` from body to answer."""
        self._counts.observe(decision, seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _DecisionCounts:
    """The per-decision metrics, counted in dicts under one lock (decisions on large
    bodies run in worker threads) and exposed as Prometheus families when collected:
    `komm_hook_requests_total{stage,action,rule}`, `komm_hook_request_seconds{stage}`
    (histogram), `komm_decision_fallbacks_total{stage}`, `komm_lookups_total{function}`,
    `komm_lookup_errors_total{function}`, `komm_lookup_seconds{function}` (histogram, for
    timed lookups)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = {}
        # A histogram: counts per bucket (the last one +Inf), then the sum.
        self.latency: dict[str, list[float]] = {}
        self.fallbacks: dict[str, int] = {}
        self.lookups: dict[str, int] = {}
        self.lookup_errors: dict[str, int] = {}
        self.lookup_latency: dict[str, list[float]] = {}

    def observe(self, decision: Decision, seconds: float) -> None:
        stage = decision.stage
        key = (stage, decision.action,
               decision.rule.name if decision.rule is not None else "(none)")
        with self._lock:
            requests = self.requests
            requests[key] = requests.get(key, 0) + 1
            histogram = self.latency.get(stage)
            if histogram is None:
                histogram = self.latency[stage] = [0] * (len(_LATENCY_BUCKETS) + 2)
            # prometheus_client: the first bucket whose bound is >= the value
            histogram[bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1
            histogram[-1] += seconds
            if decision.fallback:
                self.fallbacks[stage] = self.fallbacks.get(stage, 0) + 1
            if decision.lookups:
                lookups = self.lookups
                for lookup in decision.lookups:
                    function = lookup.function
                    lookups[function] = lookups.get(function, 0) + 1
                    if lookup.error is not None:
                        self.lookup_errors[function] = self.lookup_errors.get(function, 0) + 1
                    if lookup.duration_ms is not None:
                        timed = self.lookup_latency.get(function)
                        if timed is None:
                            timed = self.lookup_latency[function] = (
                                [0] * (len(_LOOKUP_BUCKETS) + 2))
                        timed[bisect.bisect_left(_LOOKUP_BUCKETS,
                                                 lookup.duration_ms / 1000)] += 1
                        timed[-1] += lookup.duration_ms / 1000

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            requests = dict(self.requests)
            latency = {k: list(v) for k, v in self.latency.items()}
            fallbacks = dict(self.fallbacks)
            lookups = dict(self.lookups)
            lookup_errors = dict(self.lookup_errors)
            lookup_latency = {k: list(v) for k, v in self.lookup_latency.items()}
        yield _counter("komm_hook_requests", "Hook requests answered",
                       ("stage", "action", "rule"), requests)
        yield _histogram("komm_hook_request_seconds",
                         "Time from receiving the body to the answer", "stage",
                         _LATENCY_BUCKETS, latency)
        yield _counter("komm_decision_fallbacks", "Decisions that are fallbacks",
                       ("stage",), {(k,): v for k, v in fallbacks.items()})
        yield _counter("komm_lookups", "Directory lookups performed", ("function",),
                       {(k,): v for k, v in lookups.items()})
        yield _counter("komm_lookup_errors", "Directory lookups that failed",
                       ("function",), {(k,): v for k, v in lookup_errors.items()})
        yield _histogram("komm_lookup_seconds", "Duration of timed directory lookups",
                         "function", _LOOKUP_BUCKETS, lookup_latency)


def _counter(name: str, documentation: str, labels: tuple[str, ...],
             values: dict[tuple[str, ...], int]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, value in values.items():
        family.add_metric(key, value)
    return family


def _histogram(name: str, documentation: str, label: str, bounds: tuple[float, ...],
               values: dict[str, list[float]]) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=(label,))
    names = [floatToGoString(b) for b in bounds] + ["+Inf"]
    for key, counts in values.items():
        cumulative = 0.0
        buckets = []
        for bound, count in zip(names, counts[:-1], strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        family.add_metric((key,), buckets, counts[-1])
    return family
