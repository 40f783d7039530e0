"""Prometheus metrics of the API, in a registry of their own per app instance."""

from __future__ import annotations

import platform
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest

from preservarium_pusher_api import __version__

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_E2E_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class PusherMetrics:
    """Every metric the API exports, prefixed ``pusher_``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.commands = Counter(
            "pusher_commands",
            "Commands submitted, by protocol and outcome (accepted, rejected, unavailable).",
            ["protocol", "outcome"],
            registry=registry,
        )
        self.produce_latency = Histogram(
            "pusher_kafka_produce_duration_seconds",
            "Time from handing a command to the producer until Kafka acknowledged it.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "pusher_batch_size_commands",
            "Number of commands per batch request.",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        self.http_requests = Counter(
            "pusher_http_requests",
            "HTTP requests, by method, route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.http_duration = Histogram(
            "pusher_http_request_duration_seconds",
            "HTTP request duration, by method and route template.",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.kafka_connected = Gauge(
            "pusher_kafka_connected",
            "1 when the last connection attempt or probe reached Kafka, else 0.",
            registry=registry,
        )
        self.command_status = Counter(
            "pusher_command_status",
            "Status transitions applied to the status store, by status and protocol.",
            ["status", "protocol"],
            registry=registry,
        )
        self.command_latency = Histogram(
            "pusher_command_end_to_end_seconds",
            "Time from acceptance to a terminal status, by protocol and status.",
            ["protocol", "status"],
            buckets=_E2E_BUCKETS,
            registry=registry,
        )
        self.tracker_lag = Gauge(
            "pusher_tracker_lag_records",
            "Status events on the results topic not yet applied by this tracker.",
            registry=registry,
        )
        self.tracker_watermark_age = Gauge(
            "pusher_tracker_watermark_age_seconds",
            "How far behind now the sweeper decides deadlines: every results partition has "
            "been read to its end up to this many seconds ago.",
            registry=registry,
        )
        self.store_write_latency = Histogram(
            "pusher_store_write_duration_seconds",
            "Status store write transactions, by operation.",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.tracker_dropped = Counter(
            "pusher_tracker_dropped_records",
            "Records the tracker dropped: invalid (not the contract) or refused (the store "
            "refused that record alone while it took the others).",
            ["reason"],
            registry=registry,
        )
        for reason in ("invalid", "refused"):
            self.tracker_dropped.labels(reason)
        self.store_healthy = Gauge(
            "pusher_store_healthy",
            "1 when the last status store write succeeded, else 0.",
            registry=registry,
        )
        self.webhook_deliveries = Counter(
            "pusher_webhook_deliveries",
            "Webhook delivery attempts by subscription and outcome (delivered, failed, "
            "dropped while paused).",
            ["subscription", "outcome"],
            registry=registry,
        )
        self.webhook_duration = Histogram(
            "pusher_webhook_delivery_duration_seconds",
            "Time a webhook receiver took to answer (or to fail).",
            ["subscription"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.webhook_paused = Gauge(
            "pusher_webhook_paused",
            "1 while a webhook subscription is paused after failing too long.",
            ["subscription"],
            registry=registry,
        )
        self.webhook_backlog = Gauge(
            "pusher_webhook_backlog",
            "Events fetched for a webhook subscription and not yet delivered (or dropped).",
            ["subscription"],
            registry=registry,
        )
        self.event_streams = Gauge(
            "pusher_event_streams_open",
            "Event streams (GET /api/v1/events) open on this instance.",
            registry=registry,
        )
        self.build = Info("pusher_build", "Version of the running service.", registry=registry)
        self.build.info({"version": __version__, "python": platform.python_version()})

    def exposition(self) -> bytes:
        """Prometheus text exposition format of every metric."""
        return generate_latest(self.registry)

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly digest: counters per label set, histogram counts and sums."""
        summary: dict[str, Any] = {}
        for family in self.registry.collect():
            entries = []
            for sample in family.samples:
                if sample.name.endswith(("_created", "_bucket")):
                    continue
                entries.append(
                    {"name": sample.name, "labels": sample.labels, "value": sample.value}
                )
            summary[family.name] = {
                "type": family.type,
                "help": family.documentation,
                "samples": entries,
            }
        return summary
