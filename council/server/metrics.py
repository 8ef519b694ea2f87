"""Prometheus metrics of the router: requests, latency, each seat's votes, and each process's live figures."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# `*_created` series double the output and no dashboard reads them.
disable_created_metrics()


class ProcessCollector(Collector):
    """Reads the supervisor's processes at scrape time, so gauges are never stale or left behind."""

    def __init__(self, snapshots: Callable[[], list[dict[str, Any]]],
                 slots: Callable[[], list[dict[str, Any]]]) -> None:
        self._snapshots = snapshots
        self._slots = slots

    def collect(self) -> Iterator[Metric]:
        # One series per llama-server process (its key, `COUNCIL/I` or a shared model's), labelled `process`: the
        # seats it serves vote under their own names (`council_seat_votes_total`).
        tps = GaugeMetricFamily("council_process_tokens_per_second", "Decode speed of a llama-server process",
                                labels=["process"])
        acc = GaugeMetricFamily("council_process_draft_acceptance", "Accepted / drafted tokens of a process",
                                labels=["process"])
        restarts = GaugeMetricFamily("council_process_restarts", "Restarts of a process", labels=["process"])
        ready = GaugeMetricFamily("council_process_ready", "1 when the process is ready (its state as a label)",
                                  labels=["process", "state"])
        inflight = GaugeMetricFamily("council_process_in_flight", "Requests in flight on a process",
                                     labels=["process"])
        draft_n = GaugeMetricFamily("council_process_draft_n", "Draft length the process runs with (n_max: auto)",
                                    labels=["process"])
        draft_changes = GaugeMetricFamily("council_process_draft_changes",
                                          "Draft length changes live tuning made", labels=["process"])
        for snap in self._snapshots():
            name = str(snap["name"])
            if snap["tokens_per_second"] is not None:
                tps.add_metric([name], float(snap["tokens_per_second"]))
            if snap["draft_acceptance"] is not None:
                acc.add_metric([name], float(snap["draft_acceptance"]))
            restarts.add_metric([name], float(snap["restarts"]))
            ready.add_metric([name, str(snap["state"])], 1.0 if snap["state"] == "ready" else 0.0)
            inflight.add_metric([name], float(snap["in_flight"]))
            if snap.get("draft_n") is not None:
                draft_n.add_metric([name], float(snap["draft_n"]))
                tuning = snap.get("draft_tuning") or {}
                draft_changes.add_metric([name], float(tuning.get("changes", 0)))
        # `gpu` is the product name (what a legend shows), `id` tells identical cards apart: by name alone two
        # such cards were one series twice, and Prometheus drops duplicate samples.
        used = GaugeMetricFamily("council_slots_used", "Slots taken on a GPU", labels=["gpu", "id"])
        total = GaugeMetricFamily("council_slots_total", "Slots on a GPU", labels=["gpu", "id"])
        for gpu in self._slots():
            used.add_metric([gpu["name"], gpu["id"]], float(gpu["slots_used"]))
            total.add_metric([gpu["name"], gpu["id"]], float(gpu["slots"]))
        yield from (tps, acc, restarts, ready, inflight, draft_n, draft_changes, used, total)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("council_requests", "HTTP requests by route, model and status",
                                ["route", "model", "status"], registry=self.registry)
        self.latency = Histogram("council_request_seconds", "Request latency", ["route", "model"],
                                 registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.overhead = Histogram("council_router_overhead_seconds", "Time the router itself added", ["route"],
                                  registry=self.registry,
                                  buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05))
        self.answers = Counter("council_answers", "Council answers", ["council", "early_stop", "degraded"],
                               registry=self.registry)
        self.votes = Counter("council_seat_votes", "Seat outcomes in council answers",
                             ["council", "seat", "status", "with_winner"], registry=self.registry)
        self.agreement = Histogram("council_agreement", "Winning share of the votes", ["council"],
                                   registry=self.registry, buckets=(0.2, 0.34, 0.5, 0.67, 0.75, 0.9, 1.0))
        self.rejected = Counter("council_rejected", "Requests refused by limits", ["reason"], registry=self.registry)
        # Each metric's child per label values, looked up once: `labels()` checks its arguments and takes a lock
        # on every call, several times a request. Label values are bounded (routes, known models, statuses,
        # councils, members), so the caches are too.
        self.request_count = functools.lru_cache(maxsize=4096)(self.requests.labels)
        self.request_latency = functools.lru_cache(maxsize=4096)(self.latency.labels)
        self.overhead_of = functools.lru_cache(maxsize=64)(self.overhead.labels)
        self.answer_count = functools.lru_cache(maxsize=1024)(self.answers.labels)
        self.agreement_of = functools.lru_cache(maxsize=1024)(self.agreement.labels)
        self.vote_count = functools.lru_cache(maxsize=8192)(self.votes.labels)

    def observe(self, route: str, model: str, status: int | str, seconds: float, overhead: float | None) -> None:
        """One request answered (errors, streams and cancelled ones too): its status, latency and the router's
        own time (None where it is not known, e.g. a streamed relay)."""
        self.request_count(route, model, str(status)).inc()
        self.request_latency(route, model).observe(seconds)
        if overhead is not None:
            self.overhead_of(route).observe(overhead)

    def watch(self, collector: Collector) -> None:
        self.registry.register(collector)
