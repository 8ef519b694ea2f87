"""The scrape-time gauges, read through prometheus_client's own exposition (fast, in process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from council.server.metrics import ProcessCollector


def test_two_identical_gpus_are_two_slot_series() -> None:
    """Before: labelled by product name alone, two identical cards were one series written twice (Prometheus
    keeps one sample of a duplicate), so a host's second GPU vanished from the slots panel."""
    gpus = [{"name": "NVIDIA L4", "id": "GPU-a", "slots": 22, "slots_used": 20},
            {"name": "NVIDIA L4", "id": "GPU-b", "slots": 22, "slots_used": 4}]
    registry = CollectorRegistry()
    registry.register(ProcessCollector(lambda: [], lambda: gpus))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    used = {(s.labels["gpu"], s.labels["id"]): s.value for s in families["council_slots_used"].samples}
    assert used == {("NVIDIA L4", "GPU-a"): 20.0, ("NVIDIA L4", "GPU-b"): 4.0}
    total = [s.labels for s in families["council_slots_total"].samples]
    assert len({tuple(sorted(labels.items())) for labels in total}) == 2
