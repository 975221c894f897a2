"""The queue's numbers in Prometheus' exposition format, as `/metrics` serves them."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from queuelab.engine.request_queue import RequestQueue


class QueueCollector:
    """A Prometheus collector that reads the queue's own numbers at scrape time.

    The queue already keeps its counts and cumulative latency histograms (the dashboard and `/stats`
    use them too), so this exports them rather than keeping a second set of metric objects that could
    drift from the first.
    """

    def __init__(self, queue: RequestQueue, refused: Counter[int] | None = None) -> None:
        self.queue, self.refused = queue, refused if refused is not None else Counter()

    def collect(self) -> Iterator[Metric]:
        q, s = self.queue, self.queue.stats()
        yield GaugeMetricFamily("queuelab_queue_depth", "Requests waiting in the queue.", value=s.queue_size)
        yield GaugeMetricFamily("queuelab_processing", "Requests being processed: the running batch size (at most "
                                "1 when sequential).", value=s.processing)
        yield GaugeMetricFamily("queuelab_max_batch", "The scheduler's largest batch.", value=q.scheduler.max_batch)
        yield CounterMetricFamily("queuelab_model_steps", "Model steps run (prefill or decode).", value=q.step_count)
        if s.kv is not None:
            yield GaugeMetricFamily("queuelab_kv_blocks_used", "KV-cache blocks held by running requests.",
                                    value=s.kv.blocks_used)
            yield GaugeMetricFamily("queuelab_kv_blocks_total", "KV-cache blocks in the budget.", value=s.kv.blocks_total)
            yield GaugeMetricFamily("queuelab_kv_last_block_fill", "Mean fill of the running requests' last KV blocks "
                                    "(0-1).", value=s.kv.last_block_fill)
        requests = CounterMetricFamily("queuelab_requests", "Requests by final state (submitted counts every request).",
                                       labels=["state"])
        for state in ("submitted", "completed", "failed", "cancelled", "rejected"):
            requests.add_metric([state], getattr(s, state))
        yield requests
        yield CounterMetricFamily("queuelab_generated_tokens", "Tokens generated for completed requests.",
                                  value=q.total_tokens)
        http = CounterMetricFamily("queuelab_http_refused", "Requests answered with an error before they reached "
                                   "the queue (malformed, unknown field, wrong model, ...), by HTTP status.",
                                   labels=["status"])
        for status, n in sorted(self.refused.items()):
            http.add_metric([str(status)], n)
        yield http
        for kind, h in q.histograms().items():
            buckets = [("+Inf" if math.isinf(b) else str(b), n) for b, n in h.cumulative()]
            yield HistogramMetricFamily(f"queuelab_{kind}_seconds", f"{kind} of completed requests, seconds.",
                                        buckets=buckets, sum_value=h.total)


def metrics_registry(queue: RequestQueue, refused: Counter[int] | None = None) -> CollectorRegistry:
    """The queue's metrics, plus the standard process and platform metrics every exporter has."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(queue, refused))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def prometheus(queue: RequestQueue) -> str:
    """The queue's state in Prometheus' text format (as `/metrics` serves it)."""
    return generate_latest(metrics_registry(queue)).decode()


__all__ = ["QueueCollector", "metrics_registry", "prometheus"]
