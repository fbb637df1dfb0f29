"""Prometheus metrics of one server, in its own registry (two servers in one process never share counters).

The engine loop thread is the one writer of every engine metric: it sets the gauges from
`Engine.stats()` after each step and each batch of commands, and observes token timings as it
publishes them. /metrics only reads (prometheus_client's values are thread-safe).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from fastx.engine.engine import EngineStats

# Seconds. On a 2-core CPU a tiny model's token takes ~5 ms and SmolLM2's ~50 ms; a GPU's ~5-20 ms.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests_running = Gauge("fastx_requests_running", "Requests in the running batch", registry=r)
        self.requests_waiting = Gauge("fastx_requests_waiting", "Requests waiting to be admitted", registry=r)
        self.kv_blocks_used = Gauge("fastx_kv_blocks_used", "KV-cache blocks held by sequences", registry=r)
        self.kv_blocks_free = Gauge("fastx_kv_blocks_free", "KV-cache blocks free (cached or empty)", registry=r)
        self.prefix_cache_hit_tokens = Counter(
            "fastx_prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache", registry=r
        )
        self.preemptions = Counter("fastx_preemptions", "Sequences preempted for recompute", registry=r)
        self.prompt_tokens = Counter("fastx_prompt_tokens", "Prompt tokens of accepted requests", registry=r)
        self.generation_tokens = Counter("fastx_generation_tokens", "Tokens generated", registry=r)
        self.requests_finished = Counter(
            "fastx_requests_finished", "Engine requests finished, by reason", ["finish_reason"], registry=r
        )
        self.step_failures = Counter("fastx_engine_step_failures", "Engine steps that raised", registry=r)
        self.time_to_first_token = Histogram(
            "fastx_time_to_first_token_seconds",
            "From the request's arrival to its first token",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            "fastx_inter_token_latency_seconds",
            "Between two tokens of one sequence",
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self._last_prefix_hits = 0
        self._last_preemptions = 0

    def observe_engine(self, stats: EngineStats) -> None:
        self.requests_running.set(stats.num_requests_running)
        self.requests_waiting.set(stats.num_requests_waiting)
        self.kv_blocks_used.set(stats.num_kv_blocks - stats.num_free_kv_blocks)
        self.kv_blocks_free.set(stats.num_free_kv_blocks)
        # The engine counts from its start; the counters advance by what changed since the last look.
        self.prefix_cache_hit_tokens.inc(stats.num_prefix_hit_tokens - self._last_prefix_hits)
        self.preemptions.inc(stats.num_preemptions - self._last_preemptions)
        self._last_prefix_hits = stats.num_prefix_hit_tokens
        self._last_preemptions = stats.num_preemptions

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
