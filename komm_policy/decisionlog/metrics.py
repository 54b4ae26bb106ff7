"""The decision log's state as Prometheus metrics (collected when /metrics is read)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .log import DecisionLog, LogStatus

Family = type[GaugeMetricFamily] | type[CounterMetricFamily]

_PROCESS: tuple[tuple[Family, str, str, Callable[[LogStatus], float]], ...] = (
    (GaugeMetricFamily, "komm_decision_log_writer_alive",
     "1 while the decision log writer process runs", lambda s: 1.0 if s.alive else 0.0),
    (CounterMetricFamily, "komm_decision_log_writer_restarts",
     "Times the writer process was restarted", lambda s: s.restarts),
    (CounterMetricFamily, "komm_decision_log_spool_errors",
     "Decisions that could not be written to the spool", lambda s: s.spool_errors),
    (CounterMetricFamily, "komm_decision_log_spool_tempfails",
     "Answers turned into 451 4.3.0 because the spool failed", lambda s: s.tempfails),
    (CounterMetricFamily, "komm_decision_log_unrecordable",
     "Answers turned into 451 4.3.0 because their record could not be encoded or was "
     "over the spool's entry limit", lambda s: s.unrecordable),
    (CounterMetricFamily, "komm_decision_log_dropped_records",
     "Records dropped: spool failing and the memory queue full", lambda s: s.dropped),
    (GaugeMetricFamily, "komm_decision_log_spool_failing",
     "1 while the spool cannot be written", lambda s: 1.0 if s.spool_failing else 0.0),
    (CounterMetricFamily, "komm_decision_log_spool_skipped_bytes",
     "Bytes of the spool the writer skipped: no intact frame (corruption, a frame cut "
     "short)", lambda s: s.spool_skipped_bytes),
    (CounterMetricFamily, "komm_decision_log_spool_lost_records",
     "Records lost in corrupt stretches of the spool (they reach no sink)",
     lambda s: s.spool_lost_records),
    (GaugeMetricFamily, "komm_decision_log_state_set_aside",
     "Corrupt spool state.json files the writer set aside (kept as "
     "state.json.corrupt-*; the sinks' positions were recovered)",
     lambda s: s.state_recoveries),
    (CounterMetricFamily, "komm_decision_log_spooled_records",
     "Sequence number of the next spool entry", lambda s: s.next_seq),
)
"""The log's own state: (family, name, help, value)."""

_PER_SINK: tuple[tuple[Family, str, str, Callable[[LogStatus, str], float | None]], ...] = (
    (GaugeMetricFamily, "komm_decision_log_backlog_records",
     "Records a sink has not taken yet", lambda s, sink: s.backlog[sink]),
    (GaugeMetricFamily, "komm_decision_log_oldest_unwritten_seconds",
     "Age of the oldest record a sink has not taken", lambda s, sink: s.oldest_age[sink]),
    (CounterMetricFamily, "komm_decision_log_sink_errors",
     "Failed writes to a sink (retried)", lambda s, sink: s.sink_errors.get(sink, 0)),
    (GaugeMetricFamily, "komm_decision_log_sink_blocked",
     "1 while a sink refuses records until its configuration is fixed (records stay in "
     "the spool)", lambda s, sink: 1.0 if sink in s.blocked_sinks else 0.0),
    (CounterMetricFamily, "komm_decision_log_dead_letters",
     "Records a sink's server refused for good (SpacetimeDB 530), moved to its "
     "dead-letter file", lambda s, sink: s.sink_counters.get(sink, {}).get("dead_letters")),
    (GaugeMetricFamily, "komm_decision_log_refused_in_a_row",
     "Records a sink's server refused since it last accepted one (more than "
     "max_dead_letters blocks the sink)",
     lambda s, sink: s.sink_counters.get(sink, {}).get("refused_in_a_row")),
)
"""Each sink's state, labelled `sink`: (family, name, help, value; None: not reported by
that sink)."""


class LogCollector:
    def __init__(self, decision_log: DecisionLog) -> None:
        self.log = decision_log

    def collect(self) -> Iterator[Metric]:
        status = self.log.status()
        for family, name, documentation, value in _PROCESS:
            yield family(name, documentation, value=value(status))
        for family, name, documentation, per_sink in _PER_SINK:
            metric = family(name, documentation, labels=["sink"])
            for sink in status.backlog:
                sink_value = per_sink(status, sink)
                if sink_value is not None:
                    metric.add_metric([sink], sink_value)
            yield metric


def register_log_metrics(registry: CollectorRegistry, decision_log: DecisionLog) -> None:
    registry.register(LogCollector(decision_log))  # type: ignore[arg-type]
