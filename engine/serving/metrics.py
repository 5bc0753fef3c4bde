"""The engine's Prometheus metrics, in a private registry (the monitoring issue extends them).

Names (prefix ``otf2d_``; counters are exposed with ``_total``):

==========================================  =========  ================================================
``otf2d_particles_received_total``          counter    new particles journaled (duplicates excluded)
``otf2d_particles_classified_total``        counter    particles folded into the classes
``otf2d_particles_rejected_total{reason}``  counter    reason ∈ invalid, inconsistent, duplicate
``otf2d_particles_revisited_total``         counter    particles put through idle-time reclassification
``otf2d_messages_total{result}``            counter    batch messages answered: ack, nack, reject
``otf2d_file_to_classified_latency_seconds``  histogram  file ready (``file_ready_time``) → folded in
``otf2d_em_batch_duration_seconds``         histogram  one online-EM step (fold of one batch)
``otf2d_queue_depth``                       gauge      particles journaled and not yet folded in
``otf2d_checkpoint_age_seconds``            gauge      since the oldest session's last checkpoint
``otf2d_snapshot_timestamp_seconds``        gauge      unix time of the newest snapshot written
``otf2d_snapshot_age_seconds``              gauge      since the newest snapshot (+Inf before one)
``otf2d_device_memory_bytes{kind}``         gauge      GPU memory of torch, kind ∈ allocated, reserved
                                                       (CUDA engines only)
``otf2d_build_info{version,torch,device}``  gauge      1, with the versions and the device as labels
``process_*``                               various    the process collector of prometheus-client:
                                                       ``process_resident_memory_bytes``, CPU seconds,
                                                       open file descriptors (Linux)
==========================================  =========  ================================================
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server

#: ``reason`` label values of ``otf2d_particles_rejected_total``.
REJECT_REASONS: tuple[str, ...] = ("invalid", "inconsistent", "duplicate")
#: ``result`` label values of ``otf2d_messages_total``.
MESSAGE_RESULTS: tuple[str, ...] = ("ack", "nack", "reject")
#: Labels of ``otf2d_build_info``.
BUILD_LABELS: tuple[str, ...] = ("version", "torch", "device")
#: Buckets of the file → classified latency, seconds.
LATENCY_BUCKETS_SECONDS = (0.25, 0.5, 1.0, 2.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
#: Buckets of the duration of one EM step, seconds.
STEP_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class EngineMetrics:
    """Every engine metric, registered in ``registry`` (a fresh private one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.particles_received = Counter(
            "otf2d_particles_received", "New particles journaled (duplicates excluded)", registry=r
        )
        self.particles_classified = Counter(
            "otf2d_particles_classified", "Particles folded into the classes", registry=r
        )
        self.particles_rejected = Counter(
            "otf2d_particles_rejected", "Particles not accepted, by reason", ["reason"], registry=r
        )
        for reason in REJECT_REASONS:
            self.particles_rejected.labels(reason)
        self.particles_revisited = Counter(
            "otf2d_particles_revisited", "Particles put through the idle-time reclassification", registry=r
        )
        self.messages = Counter("otf2d_messages", "Batch messages answered, by result", ["result"], registry=r)
        for result in MESSAGE_RESULTS:
            self.messages.labels(result)
        self.latency = Histogram(
            "otf2d_file_to_classified_latency_seconds",
            "From the particle file becoming ready to the particle folded into the classes",
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=r,
        )
        self.step_duration = Histogram(
            "otf2d_em_batch_duration_seconds",
            "Duration of one online-EM step",
            buckets=STEP_BUCKETS_SECONDS,
            registry=r,
        )
        self.queue_depth = Gauge("otf2d_queue_depth", "Particles journaled and not yet folded in", registry=r)
        self.checkpoint_age = Gauge(
            "otf2d_checkpoint_age_seconds", "Seconds since the least recent session checkpoint", registry=r
        )
        self.snapshot_timestamp = Gauge(
            "otf2d_snapshot_timestamp_seconds", "Unix time of the newest snapshot written", registry=r
        )
        self.snapshot_age = Gauge("otf2d_snapshot_age_seconds", "Seconds since the newest snapshot", registry=r)
        self._last_snapshot_time = 0.0
        self.snapshot_age.set_function(self._snapshot_age)
        self.device_memory = Gauge(
            "otf2d_device_memory_bytes", "GPU memory held by torch (CUDA engines only), by kind", ["kind"], registry=r
        )
        self.build_info = Gauge(
            "otf2d_build_info", "1, labelled with the otf2d and torch versions and the device", BUILD_LABELS, registry=r
        )
        ProcessCollector(registry=r)

    def set_build_info(self, version: str, torch_version: str, device: str) -> None:
        """Expose ``otf2d_build_info{version,torch,device} 1`` (one series: an earlier one is removed)."""
        self.build_info.clear()
        self.build_info.labels(version, torch_version, device).set(1)

    def _snapshot_age(self) -> float:
        stamp = self._last_snapshot_time
        return time.time() - stamp if stamp > 0 else math.inf

    def snapshot_written(self, unix_time: float) -> None:
        """Record that a snapshot was written at ``unix_time``."""
        self._last_snapshot_time = max(self._last_snapshot_time, unix_time)
        self.snapshot_timestamp.set(self._last_snapshot_time)

    def bind(self, queue_depth: Callable[[], float], checkpoint_age: Callable[[], float]) -> None:
        """Compute the queue depth and the checkpoint age at scrape time from these callables."""
        self.queue_depth.set_function(queue_depth)
        self.checkpoint_age.set_function(checkpoint_age)

    def bind_device_memory(self, read: Callable[[], Mapping[str, int]]) -> None:
        """Read ``otf2d_device_memory_bytes`` at scrape time from ``read()`` (kind → bytes).

        Only the kinds ``read()`` returns now are exposed: none for a CPU engine.
        """

        def reader(kind: str) -> Callable[[], float]:
            return lambda: float(read().get(kind, math.nan))

        for kind in read():
            self.device_memory.labels(kind).set_function(reader(kind))

    def serve(self, port: int, addr: str = "0.0.0.0") -> Callable[[], None]:
        """Serve ``/metrics`` on ``addr:port`` in a background thread; returns a function that stops it."""
        server, thread = start_http_server(port, addr=addr, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(5.0)

        return stop


__all__ = ["BUILD_LABELS", "LATENCY_BUCKETS_SECONDS", "MESSAGE_RESULTS", "REJECT_REASONS", "EngineMetrics"]
