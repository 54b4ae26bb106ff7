"""The decision log's state as Prometheus metrics (collected when /metrics is read)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .log import DecisionLog


class LogCollector:
    def __init__(self, decision_log: DecisionLog) -> None:
        self.log = decision_log

    def collect(self) -> Iterator[Metric]:
        status = self.log.status()
        yield GaugeMetricFamily("komm_decision_log_writer_alive",
                                "1 while the decision log writer process runs",
                                value=1.0 if status.alive else 0.0)
        yield CounterMetricFamily("komm_decision_log_writer_restarts",
                                  "Times the writer process was restarted",
                                  value=status.restarts)
        yield CounterMetricFamily("komm_decision_log_spool_errors",
                                  "Decisions that could not be written to the spool",
                                  value=status.spool_errors)
        yield CounterMetricFamily("komm_decision_log_spool_tempfails",
                                  "Answers turned into 451 4.3.0 because the spool failed",
                                  value=status.tempfails)
        yield CounterMetricFamily("komm_decision_log_dropped_records",
                                  "Records dropped: spool failing and the memory queue full",
                                  value=status.dropped)
        yield GaugeMetricFamily("komm_decision_log_spool_failing",
                                "1 while the spool cannot be written",
                                value=1.0 if status.spool_failing else 0.0)
        yield CounterMetricFamily("komm_decision_log_spooled_records",
                                  "Sequence number of the next spool entry",
                                  value=status.next_seq)
        backlog = GaugeMetricFamily("komm_decision_log_backlog_records",
                                    "Records a sink has not taken yet", labels=["sink"])
        age = GaugeMetricFamily("komm_decision_log_oldest_unwritten_seconds",
                                "Age of the oldest record a sink has not taken",
                                labels=["sink"])
        errors = CounterMetricFamily("komm_decision_log_sink_errors",
                                     "Failed writes to a sink (retried)", labels=["sink"])
        blocked = GaugeMetricFamily("komm_decision_log_sink_blocked",
                                    "1 while a sink refuses records until its configuration "
                                    "is fixed (records stay in the spool)", labels=["sink"])
        dead = CounterMetricFamily("komm_decision_log_dead_letters",
                                   "Records a sink's server refused for good (SpacetimeDB "
                                   "530), moved to its dead-letter file", labels=["sink"])
        for name, value in status.backlog.items():
            backlog.add_metric([name], value)
            age.add_metric([name], status.oldest_age[name])
            errors.add_metric([name], status.sink_errors.get(name, 0))
            blocked.add_metric([name], 1.0 if name in status.blocked_sinks else 0.0)
            counters = status.sink_counters.get(name, {})
            if "dead_letters" in counters:
                dead.add_metric([name], counters["dead_letters"])
        yield backlog
        yield age
        yield errors
        yield blocked
        yield dead


def register_log_metrics(registry: CollectorRegistry, decision_log: DecisionLog) -> None:
    registry.register(LogCollector(decision_log))  # type: ignore[arg-type]
