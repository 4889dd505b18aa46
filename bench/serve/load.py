"""The load generator: N concurrent clients streaming OpenAI chat completions, each request
timed from its start to its first content token (TTFT) and to its last byte (latency).

One asyncio process, aiohttp, server-sent events parsed by hand (a few lines): the client
must cost little CPU on a 2-core machine where the server runs too.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional


@dataclass
class Sample:
    ok: bool
    latency: float  # request start -> last byte
    ttft: Optional[float]  # request start -> first content token
    output_tokens: int
    status: int = 200
    server: Optional[dict[str, float]] = None  # the Server-Timing header's durations (ms), where sent


def parse_server_timing(value: Optional[str]) -> Optional[dict[str, float]]:
    """'prep;dur=1.20, first-token;dur=8.00' -> {'prep': 1.2, 'first-token': 8.0}."""
    if not value:
        return None
    out = {}
    for part in value.split(","):
        name, _, rest = part.strip().partition(";")
        if rest.startswith("dur="):
            out[name] = float(rest[4:])
    return out or None


@dataclass
class LevelResult:
    concurrency: int
    requests: int
    ok: int
    wall_seconds: float
    requests_per_s: float
    output_tokens_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    statuses: dict[str, int]
    server_timing_ms: Optional[dict[str, float]] = None  # mean of each Server-Timing component
    cpu_seconds: Optional[dict[str, float]] = None  # CPU time per process kind during the level

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def summarize(concurrency: int, samples: list[Sample], wall: float) -> LevelResult:
    ok = [s for s in samples if s.ok]
    statuses: dict[str, int] = {}
    for s in samples:
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    timed = [s.server for s in ok if s.server]
    server = {k: round(statistics.mean(t.get(k, 0.0) for t in timed), 2) for k in timed[0]} if timed else None
    lat = [s.latency for s in ok] or [float("nan")]
    ttft = [s.ttft for s in ok if s.ttft is not None] or [float("nan")]
    return LevelResult(
        concurrency=concurrency,
        requests=len(samples),
        ok=len(ok),
        wall_seconds=round(wall, 3),
        requests_per_s=round(len(ok) / wall, 3),
        output_tokens_per_s=round(sum(s.output_tokens for s in ok) / wall, 2),
        latency_p50_ms=round(statistics.median(lat) * 1000, 1),
        latency_p99_ms=round(percentile(lat, 99) * 1000, 1),
        ttft_p50_ms=round(statistics.median(ttft) * 1000, 1),
        ttft_p99_ms=round(percentile(ttft, 99) * 1000, 1),
        statuses=statuses,
        server_timing_ms=server,
    )


async def one_request(session, url: str, body: dict[str, Any], headers: dict[str, str]) -> Sample:
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    try:
        async with session.post(url, json=body, headers=headers) as r:
            if r.status != 200:
                await r.read()
                return Sample(False, time.perf_counter() - t0, None, 0, r.status)
            server = parse_server_timing(r.headers.get("Server-Timing"))
            buf = b""
            async for piece in r.content.iter_any():
                buf += piece
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    if not event.startswith(b"data: "):
                        continue
                    data = event[6:]
                    if data == b"[DONE]":
                        continue
                    obj = json.loads(data)
                    if ttft is None and obj.get("choices") and obj["choices"][0].get("delta", {}).get("content"):
                        ttft = time.perf_counter() - t0
                    if obj.get("usage"):
                        tokens = obj["usage"]["completion_tokens"]
        return Sample(True, time.perf_counter() - t0, ttft, tokens, server=server)
    except Exception:  # noqa: BLE001 - a failed request is a data point, not a crash of the benchmark
        return Sample(False, time.perf_counter() - t0, None, 0, 0)


async def run_level(base_url: str, bodies: list[dict[str, Any]], concurrency: int, headers: Optional[dict[str, str]] = None) -> LevelResult:
    """Send every body (in order, `concurrency` at a time) and summarize."""
    import aiohttp

    url = base_url.rstrip("/") + "/v1/chat/completions"
    samples: list[Sample] = []
    it = iter(bodies)
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:

        async def client() -> None:
            while (body := next(it, None)) is not None:
                samples.append(await one_request(session, url, body, headers or {}))

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return summarize(concurrency, samples, wall)


def process_kind(cmdline: str) -> str:
    """Which part of a serving system a process is, from its command line / title."""
    rules = [
        ("EngineCore", "vLLM engine core"),
        ("VLLM::Worker", "vLLM engine worker"),
        ("VllmWorker", "vLLM engine worker"),
        ("ServeReplica", "Serve replica"),
        ("ProxyActor", "Serve proxy"),
        ("ServeController", "Serve controller"),
        ("vllm.entrypoints", "vLLM API server"),
        ("pipeline serve", "driver"),
        ("rayserve_llm_app", "driver"),
        ("raylet", "Ray daemons"),
        ("gcs_server", "Ray daemons"),
        ("ray/", "Ray daemons"),
    ]
    for needle, kind in rules:
        if needle in cmdline:
            return kind
    return "other"


def cpu_snapshot(session: int) -> dict[int, tuple[str, float]]:
    """pid -> (kind, user+system CPU seconds) of every process of a session."""
    import os

    import psutil

    out = {}
    for p in psutil.process_iter(["cmdline", "name", "cpu_times"]):
        try:
            if os.getsid(p.pid) != session:
                continue
            title = " ".join(p.info["cmdline"] or []) or (p.info["name"] or "")
            t = p.info["cpu_times"]
            out[p.pid] = (process_kind(title), t.user + t.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue
    return out


def cpu_delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds spent between two snapshots, per process kind."""
    out: dict[str, float] = {}
    for pid, (kind, t) in after.items():
        out[kind] = out.get(kind, 0.0) + t - before.get(pid, (kind, 0.0))[1]
    return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}
