"""Prometheus metrics for the hook service, in a registry owned by one app instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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
        self.requests = Counter("komm_hook_requests", "Hook requests answered",
                                ("stage", "action", "rule"), registry=r)
        self.rejected_requests = Counter("komm_hook_bad_requests",
                                         "Hook requests refused before evaluation",
                                         ("status",), registry=r)
        self.latency = Histogram("komm_hook_request_seconds",
                                 "Time from receiving the body to the answer", ("stage",),
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.fallbacks = Counter("komm_decision_fallbacks", "Decisions that are fallbacks",
                                 ("stage",), registry=r)
        self.lookups = Counter("komm_lookups", "Directory lookups performed", ("function",),
                               registry=r)
        self.lookup_errors = Counter("komm_lookup_errors", "Directory lookups that failed",
                                     ("function",), registry=r)
        self.lookup_latency = Histogram("komm_lookup_seconds",
                                        "Duration of timed directory lookups", ("function",),
                                        buckets=_LOOKUP_BUCKETS, registry=r)
        self.reloads = Counter("komm_policy_reloads", "Policy reloads", ("result",),
                               registry=r)
        self.rules = Gauge("komm_policy_rules", "Rules in the active policy set", registry=r)
        self.log_depth = Gauge("komm_decision_log_queue_depth",
                               "Decision records waiting to be written", registry=r)
        self.log_depth.set_function(lambda: 0.0)  # the service sets the real source
        self.directory_bad_rows = Gauge(
            "komm_directory_bad_rows", "Directory rows skipped because they do not fit the "
            "schema (since start)", registry=r)
        self.directory_refresh_errors = Gauge(
            "komm_directory_refresh_errors", "Failed refreshes of the directory replica "
            "(since start)", ("kind",), registry=r)
        self.directory_age = Gauge(
            "komm_directory_age_seconds", "Seconds since the replica last read its store",
            registry=r)
        # Label children are cached: `labels()` costs more than the increment itself.
        self._request_children: dict[tuple[str, str, str], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}
        self._lookup_children: dict[str, Counter] = {}

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
        rule = decision.rule.name if decision.rule is not None else "(none)"
        key = (decision.stage, decision.action, rule)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(*key)
        counter.inc()
        latency = self._latency_children.get(decision.stage)
        if latency is None:
            latency = self._latency_children[decision.stage] = self.latency.labels(
                decision.stage)
        latency.observe(seconds)
        if decision.fallback:
            self.fallbacks.labels(decision.stage).inc()
        for lookup in decision.lookups:
            function = lookup.function
            counter = self._lookup_children.get(function)
            if counter is None:
                counter = self._lookup_children[function] = self.lookups.labels(function)
            counter.inc()
            if lookup.error is not None:
                self.lookup_errors.labels(function).inc()
            if lookup.duration_ms is not None:
                self.lookup_latency.labels(function).observe(lookup.duration_ms / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)
