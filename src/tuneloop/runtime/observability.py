"""Prometheus metrics for the tuneloop training/evaluation/promotion loop.

Everything lives on a dedicated ``CollectorRegistry`` (``REGISTRY``), never on
prometheus_client's global one, so importing this module adds no series to an
unrelated exporter and tests can rebuild it (``reset_for_tests``).

Exposed series (names are exact)::

    training_jobs_total{status,tenant}              status: started|succeeded|failed|cancelled
    training_duration_seconds_bucket/_sum/_count{tenant}
    training_loss_current{run}
    training_tokens_per_second{run}
    evaluation_score{version,metric}
    promotions_total{outcome,tenant}                outcome: promoted|rejected
    rollbacks_total{tenant}
    feedback_items_total{source,label}              label: positive|negative|neutral
    drift_detected_total{tenant}

Flows call the ``record_*`` helpers; nothing here imports prefect.

Surviving across processes
--------------------------
Prefect runs each flow run in its own process, so in-memory values die with it.
Two ways to keep them, usable together:

1. **Multiprocess mode.** Set ``PROMETHEUS_MULTIPROC_DIR`` to an existing,
   writable, initially empty folder *before any process imports
   prometheus_client* (prometheus_client picks its value backend at import).
   Every process then writes its samples to mmap files there, and
   ``collection_registry()`` / ``serve_metrics`` / ``write_textfile`` aggregate
   all of them through ``MultiProcessCollector``: counters and histograms are
   summed across processes; gauges report the most recently set value
   (``multiprocess_mode="mostrecent"``). Wipe the folder when the exporter
   (re)starts, as prometheus_client's docs require.
2. **Textfile snapshot.** ``write_textfile(path)`` writes the current values
   (aggregated, if multiprocess mode is on) atomically in the text exposition
   format, for node-exporter's textfile collector (``--collector.textfile.directory``;
   the file name must end in ``.prom``). Call it at the end of a flow run.

Tests
-----
Counters are cumulative for the life of a registry. ``reset_for_tests()``
builds a fresh ``REGISTRY`` with fresh metrics (the helpers always look the
metrics up through this module, so they follow the swap). It does not clear a
multiprocess folder.
"""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    write_to_textfile,
)

__all__ = [
    "REGISTRY",
    "TRAINING_STATUSES",
    "FEEDBACK_LABELS",
    "collection_registry",
    "multiprocess_enabled",
    "record_training_started",
    "record_training_finished",
    "record_loss",
    "record_evaluation",
    "record_promotion",
    "record_rollback",
    "record_feedback",
    "record_drift",
    "write_textfile",
    "serve_metrics",
    "stop_metrics_server",
    "reset_for_tests",
    "METRIC_NAMES",
]

TRAINING_STATUSES = ("started", "succeeded", "failed", "cancelled")
FINISHED_STATUSES = ("succeeded", "failed", "cancelled")
FEEDBACK_LABELS = ("positive", "negative", "neutral")

# Seconds to hours: a smoke run takes seconds, a real fine-tune several hours.
DURATION_BUCKETS = (
    1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 57600, 86400,
    float("inf"),
)

_MULTIPROC_ENV = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")


def multiprocess_enabled() -> bool:
    """True when prometheus_client runs in multiprocess mode (env var set)."""
    return any(os.environ.get(k) for k in _MULTIPROC_ENV)


# The one list of series: (kind, name as exposed, help, labels). prometheus_client strips a
# trailing "_total" from a Counter's name and adds it back on exposition, so the names here are exact.
SERIES = (
    (Counter, "training_jobs_total", "Training jobs by lifecycle status.", ("status", "tenant")),
    (Histogram, "training_duration_seconds", "Wall-clock duration of finished training jobs.",
     ("tenant",)),
    (Gauge, "training_loss_current", "Latest training loss of a run.", ("run",)),
    (Gauge, "training_tokens_per_second", "Latest training throughput of a run.", ("run",)),
    (Gauge, "evaluation_score", "Evaluation score of a model version, per metric.",
     ("version", "metric")),
    (Counter, "promotions_total", "Promotion gate decisions.", ("outcome", "tenant")),
    (Counter, "rollbacks_total", "Rollbacks of the serving model.", ("tenant",)),
    (Counter, "feedback_items_total", "Feedback items collected, by source and label.",
     ("source", "label")),
    (Counter, "drift_detected_total", "Drift detections.", ("tenant",)),
)
METRIC_NAMES = tuple(name for _, name, _, _ in SERIES)  # metric family names as exposed


_METRICS: dict = {}


def _build(registry: CollectorRegistry) -> None:
    """Create every series of SERIES on `registry` (the record_* helpers look them up in _METRICS, so a rebuilt
    registry takes effect at once)."""
    global REGISTRY
    REGISTRY = registry
    for kind, name, doc, labels in SERIES:
        extra = ({"buckets": DURATION_BUCKETS} if kind is Histogram else
                 {"multiprocess_mode": "mostrecent"} if kind is Gauge else {})
        _METRICS[name] = kind(name, doc, list(labels), registry=registry, **extra)


REGISTRY: CollectorRegistry
_build(CollectorRegistry(auto_describe=True))


def reset_for_tests() -> CollectorRegistry:
    """Replace ``REGISTRY`` and every metric with fresh, zeroed ones; returns the new registry."""
    _build(CollectorRegistry(auto_describe=True))
    return REGISTRY


def collection_registry() -> CollectorRegistry:
    """The registry to expose: ``REGISTRY``, or, in multiprocess mode, a fresh one
    whose ``MultiProcessCollector`` aggregates every process's files."""
    if not multiprocess_enabled():
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


# --- helpers used by flows -------------------------------------------------

def _check(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
    return value


def record_training_started(tenant: str) -> None:
    _METRICS["training_jobs_total"].labels(status="started", tenant=tenant).inc()


def record_training_finished(tenant: str, status: str, seconds: float) -> None:
    """Count a finished job (succeeded|failed|cancelled) and observe its duration."""
    _check(status, FINISHED_STATUSES, "status")
    _METRICS["training_jobs_total"].labels(status=status, tenant=tenant).inc()
    _METRICS["training_duration_seconds"].labels(tenant=tenant).observe(max(0.0, float(seconds)))


def record_loss(run: str, loss: float, tokens_per_s: float | None = None) -> None:
    _METRICS["training_loss_current"].labels(run=run).set(float(loss))
    if tokens_per_s is not None:
        _METRICS["training_tokens_per_second"].labels(run=run).set(float(tokens_per_s))


def record_evaluation(version: str, metrics: Mapping[str, float]) -> None:
    """Set ``evaluation_score{version,metric}`` for every numeric entry of ``metrics``."""
    for metric, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        _METRICS["evaluation_score"].labels(version=str(version), metric=str(metric)).set(float(value))


def record_promotion(tenant: str, promoted: bool) -> None:
    _METRICS["promotions_total"].labels(outcome="promoted" if promoted else "rejected", tenant=tenant).inc()


def record_rollback(tenant: str) -> None:
    _METRICS["rollbacks_total"].labels(tenant=tenant).inc()


def record_feedback(source: str, label: str, n: int = 1) -> None:
    _check(label, FEEDBACK_LABELS, "label")
    if n < 0:
        raise ValueError("n must be >= 0")
    if n:
        _METRICS["feedback_items_total"].labels(source=source, label=label).inc(n)


def record_drift(tenant: str) -> None:
    _METRICS["drift_detected_total"].labels(tenant=tenant).inc()


# --- export ---------------------------------------------------------------

def write_textfile(path: str | os.PathLike) -> Path:
    """Write a snapshot in the text exposition format (atomically, via a temp
    file + rename) for node-exporter's textfile collector. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), collection_registry())
    return path


class _MetricsHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        route = self.path.split("?", 1)[0]
        if route == "/metrics":
            body, ctype, code = generate_latest(collection_registry()), CONTENT_TYPE_LATEST, 200
        elif route in ("/", "/healthz"):
            body, ctype, code = b"ok\n", "text/plain; charset=utf-8", 200
        else:
            body, ctype, code = b"not found\n", "text/plain; charset=utf-8", 404
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # keep test/flow logs quiet
        pass


def serve_metrics(host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, int]:
    """Serve ``/metrics`` on a daemon thread; ``port=0`` picks a free port.

    Returns ``(server, bound_port)``. Each request reads the *current* registry
    (so it follows ``reset_for_tests`` and multiprocess files). Stop it with
    ``stop_metrics_server(server)``.
    """
    server = ThreadingHTTPServer((host, port), _MetricsHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="tuneloop-metrics", daemon=True)
    thread.start()
    server._tuneloop_thread = thread  # type: ignore[attr-defined]
    return server, server.server_address[1]


def stop_metrics_server(server: ThreadingHTTPServer) -> None:
    """Stop a server from ``serve_metrics`` and release its socket."""
    server.shutdown()
    server.server_close()
    thread = getattr(server, "_tuneloop_thread", None)
    if thread is not None:
        thread.join(timeout=5)
