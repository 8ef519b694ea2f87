"""Prometheus metrics of the router: requests, latency, votes, and each member's live figures."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# `*_created` series double the output and no dashboard reads them.
disable_created_metrics()


class MemberCollector(Collector):
    """Reads the supervisor's members at scrape time, so gauges are never stale or left behind."""

    def __init__(self, snapshots: Callable[[], list[dict[str, Any]]],
                 slots: Callable[[], list[dict[str, Any]]]) -> None:
        self._snapshots = snapshots
        self._slots = slots

    def collect(self) -> Iterator[Metric]:
        tps = GaugeMetricFamily("council_member_tokens_per_second", "Decode speed of a member", labels=["member"])
        acc = GaugeMetricFamily("council_member_draft_acceptance", "Accepted / drafted tokens", labels=["member"])
        restarts = GaugeMetricFamily("council_member_restarts", "Restarts of a member process", labels=["member"])
        ready = GaugeMetricFamily("council_member_ready", "1 when the member is ready", labels=["member", "state"])
        inflight = GaugeMetricFamily("council_member_in_flight", "Requests in flight", labels=["member"])
        draft_n = GaugeMetricFamily("council_member_draft_n", "Draft length the member runs with (n_max: auto)",
                                    labels=["member"])
        draft_changes = GaugeMetricFamily("council_member_draft_changes",
                                          "Draft length changes live tuning made", labels=["member"])
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
        self.votes = Counter("council_member_votes", "Member outcomes in council answers",
                             ["council", "member", "status", "with_winner"], registry=self.registry)
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
