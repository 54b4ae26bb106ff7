"""The hook's per-decision metrics (hook/metrics.py): counted in dicts, exposed as the
same Prometheus families prometheus_client's own Counter and Histogram give."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from komm_policy.decision import Decision, LookupRecord, RuleRef
from komm_policy.hook import metrics as hook_metrics
from komm_policy.hook.metrics import Metrics


def _decisions() -> list[tuple[Decision, float]]:
    rule = RuleRef("block_spam", "policies/20-envelope.policy", 12)
    found = LookupRecord("lookup(account: email)", ("a@example.org",), True)
    failed = LookupRecord("exists(blocked_ips: ip)", ("192.0.2.1",), None,
                          error="store down", duration_ms=12.5)
    timed = LookupRecord("exists(blocked_ips: ip)", ("192.0.2.2",), False,
                         duration_ms=0.004)
    return [
        (Decision("rcpt", "accept", lookups=(found, found)), 0.00004),
        (Decision("rcpt", "reject", rule=rule, lookups=(failed,)), 0.0001),  # on a bound
        (Decision("connect", "accept", fallback=True, cause="store down",
                  lookups=(timed, failed)), 0.3),
        (Decision("data", "quarantine", rule=rule), 7.0),  # beyond the last bound
        (Decision("rcpt", "accept", lookups=(found,)), 0.0025),
    ]


def _reference(decisions: list[tuple[Decision, float]]) -> bytes:
    """The same observations through prometheus_client's own objects."""
    r = CollectorRegistry()
    requests = Counter("komm_hook_requests", "Hook requests answered",
                       ("stage", "action", "rule"), registry=r)
    latency = Histogram("komm_hook_request_seconds",
                        "Time from receiving the body to the answer", ("stage",),
                        buckets=hook_metrics._LATENCY_BUCKETS, registry=r)
    fallbacks = Counter("komm_decision_fallbacks", "Decisions that are fallbacks",
                        ("stage",), registry=r)
    lookups = Counter("komm_lookups", "Directory lookups performed", ("function",),
                      registry=r)
    errors = Counter("komm_lookup_errors", "Directory lookups that failed", ("function",),
                     registry=r)
    timed = Histogram("komm_lookup_seconds", "Duration of timed directory lookups",
                      ("function",), buckets=hook_metrics._LOOKUP_BUCKETS, registry=r)
    for decision, seconds in decisions:
        rule = decision.rule.name if decision.rule is not None else "(none)"
        requests.labels(decision.stage, decision.action, rule).inc()
        latency.labels(decision.stage).observe(seconds)
        if decision.fallback:
            fallbacks.labels(decision.stage).inc()
        for lookup in decision.lookups:
            lookups.labels(lookup.function).inc()
            if lookup.error is not None:
                errors.labels(lookup.function).inc()
            if lookup.duration_ms is not None:
                timed.labels(lookup.function).observe(lookup.duration_ms / 1000)
    return generate_latest(r)


_FAMILIES = ("komm_hook_requests", "komm_hook_request_seconds", "komm_decision_fallbacks",
             "komm_lookup")


def _samples(exposition: bytes) -> list[str]:
    """The lines (samples, HELP, TYPE) of the per-decision families, without
    prometheus_client's `_created` timestamps (a counted dict has none), sorted: the
    families' order in a registry is not part of the format."""
    return sorted(line for line in exposition.decode().splitlines()
                  if line.removeprefix("# HELP ").removeprefix("# TYPE ").startswith(_FAMILIES)
                  and "_created" not in line)


def test_hook_metrics_expose_what_prometheus_client_would() -> None:
    decisions = _decisions()
    metrics = Metrics()
    for decision, seconds in decisions:
        metrics.observe(decision, seconds)
    ours = _samples(metrics.render())
    reference = _samples(_reference(decisions))
    assert len(ours) > 40
    assert ours == reference
    assert ('komm_hook_requests_total{action="reject",rule="block_spam",stage="rcpt"} 1.0'
            in ours)
    assert 'komm_hook_request_seconds_bucket{le="0.0001",stage="rcpt"} 2.0' in ours
    assert 'komm_lookup_errors_total{function="exists(blocked_ips: ip)"} 2.0' in ours


def test_hook_metrics_lose_no_count_across_threads() -> None:
    metrics = Metrics()
    decision = Decision("rcpt", "accept",
                        lookups=(LookupRecord("lookup(account: email)", ("x",), None),))

    def observe() -> None:
        for _ in range(20_000):
            metrics.observe(decision, 0.001)

    threads = [threading.Thread(target=observe) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    text = metrics.render().decode()
    assert 'komm_hook_requests_total{action="accept",rule="(none)",stage="rcpt"} 80000.0' in text
    assert 'komm_lookups_total{function="lookup(account: email)"} 80000.0' in text
    assert 'komm_hook_request_seconds_count{stage="rcpt"} 80000.0' in text
