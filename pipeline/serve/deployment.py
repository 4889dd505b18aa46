"""The Ray Serve deployment (one vLLM engine per replica, the FastAPI app around it) and
`run`, what `pipeline serve` calls.

    run(cfg)   start or join Ray, deploy, serve until SIGINT/SIGTERM, then drain and stop

One deployment, ingress and engine in the same replica: a request crosses the proxy and
one actor call, and no second hop to a separate engine deployment. What Serve is told:
- replicas (or autoscaling bounds) and the CPUs/GPUs of each;
- `max_ongoing_requests` / `max_queued_requests` with a `backpressure_config` (status and
  Retry-After): the proxy's bounded queue, a backstop behind the replica's own admission
  (pipeline/serve/limits.py says why both);
- `check_health` from the engine's state, every `health.check_period_s`: a dead or stuck
  engine gets its replica replaced;
- `graceful_shutdown_timeout_s` = `health.drain_timeout_s`: a replica being stopped stops
  taking requests and waits that long for its in-flight ones before its engine is shut down.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any, Callable, Optional

from pipeline.config import ServeConfig

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "PipelineReplica"


class PipelineReplica:
    """One replica: a started engine and the HTTP app answering with it."""

    async def __init__(self, cfg_json: str, model_path: str, model_name: str):
        import asyncio

        from pipeline.engine.engine import Engine, reap_orphaned_engines
        from pipeline.serve.auth import load_keys
        from pipeline.serve.service import Service

        cfg = ServeConfig.model_validate_json(cfg_json)
        digests = load_keys(cfg.auth)  # read here, on the replica's node: keys never pass through Ray
        reap_orphaned_engines()  # a replacement replica: free what a killed predecessor's engine held
        # Loaded in a thread: the replica's event loop keeps answering Serve meanwhile (~20 s).
        self.engine = await asyncio.to_thread(Engine(model_path, cfg.engine, cpus=cfg.resources.cpus_per_replica).start)
        self.service = Service(cfg, self.engine, model_name, digests)

    def __serve_build_asgi_app__(self):
        from pipeline.serve.app import create_app

        return create_app(self.service)

    async def check_health(self) -> None:
        """Ray Serve calls this every health.check_period_s; raising marks the replica unhealthy."""
        self.service.health.check()

    def __del__(self) -> None:
        # Ray Serve's shutdown hook: it calls __del__ explicitly once the replica has drained
        # (or drain_timeout_s passed). Engine.shutdown is idempotent, so a later collection
        # of the object does nothing more.
        engine = self.__dict__.get("engine")
        if engine is not None:
            engine.shutdown()


def _gpus_per_replica(cfg: ServeConfig) -> float:
    r, e = cfg.resources, cfg.engine
    if r.gpus_per_replica is not None:
        return r.gpus_per_replica
    if e.device == "cpu":
        return 0.0
    from pipeline.engine.engine import installed_device

    return float(e.tensor_parallel_size) if e.device == "cuda" or installed_device() == "cuda" else 0.0


def deployment_options(cfg: ServeConfig) -> dict[str, Any]:
    from ray.serve.config import BackpressureConfig

    a, h, r = cfg.admission, cfg.health, cfg.resources
    opts: dict[str, Any] = dict(
        name=DEPLOYMENT_NAME,
        max_ongoing_requests=a.max_ongoing_requests,
        max_queued_requests=a.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=a.reject_status, retry_after_s=a.retry_after_s),
        health_check_period_s=h.check_period_s,
        health_check_timeout_s=h.check_timeout_s,
        graceful_shutdown_timeout_s=h.drain_timeout_s,
        graceful_shutdown_wait_loop_s=0.5,
        # An engine that cannot start (bad model, no memory) fails the deployment after a few
        # tries instead of Serve's default 20 (each costing an engine load).
        max_constructor_retry_count=3,
        ray_actor_options={"num_cpus": r.cpus_per_replica, "num_gpus": _gpus_per_replica(cfg)},
        logging_config={"enable_access_log": cfg.http.access_log},
    )
    if r.autoscaling is not None:
        opts["autoscaling_config"] = r.autoscaling.model_dump()
    else:
        opts["num_replicas"] = r.replicas
    return opts


def build_application(cfg: ServeConfig, model_path: str):
    """The Serve application (not yet running): `serve.run(build_application(...))`."""
    from ray import serve

    cls = serve.deployment(serve.ingress()(PipelineReplica), **deployment_options(cfg))
    return cls.bind(cfg.model_dump_json(), model_path, os.path.basename(model_path.rstrip("/")))


def init_ray(cfg: ServeConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    from pipeline.logs import quiet_children

    verbose = quiet_children()
    r = cfg.resources
    kw: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": verbose}
    if r.ray_address:
        kw["address"] = r.ray_address
    else:
        most = r.autoscaling.max_replicas if r.autoscaling else r.replicas
        kw["num_cpus"] = r.num_cpus or max(os.cpu_count() or 1, int(most * r.cpus_per_replica) + 1)
        kw["include_dashboard"] = False
    ray.init(**kw)


def start(cfg: ServeConfig) -> str:
    """Deploy the application and wait until it serves; returns its base URL."""
    from ray import serve

    from pipeline.engine.models import resolve_model
    from pipeline.serve.auth import load_keys

    model_path = str(resolve_model(cfg.model.path))
    load_keys(cfg.auth)  # a missing key file fails here, before anything starts
    if not logging.getLogger("pipeline").isEnabledFor(logging.DEBUG):
        # Ray's and Serve's own start-up lines (token auth, "Started Serve", "Connecting to
        # existing Serve app") would bury the one line a person needs; `pipeline -v` keeps them.
        for name in ("ray", "ray.serve"):
            logging.getLogger(name).setLevel(logging.ERROR)
    init_ray(cfg)
    serve.start(
        http_options={
            "host": cfg.http.host,
            "port": cfg.http.port,
            # Serve's own deadline (a 408) only backs ours up: ours (504, generation aborted)
            # starts when the replica takes the request, Serve's when the proxy does.
            "request_timeout_s": cfg.limits.request_timeout_s + 30,
        }
    )
    serve.run(build_application(cfg, model_path), name=cfg.name, route_prefix="/")
    return f"http://{cfg.http.host}:{cfg.http.port}"


def stop(cfg: ServeConfig) -> None:
    """Drain and remove the application, then stop Serve (and Ray, if started here)."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    try:
        # Deleting the application first lets every replica finish its in-flight requests
        # (within drain_timeout_s) while the proxy still delivers their answers.
        serve.delete(cfg.name)
        serve.shutdown()
    finally:
        ray.shutdown()


def run(cfg: ServeConfig, on_ready: Optional[Callable[[str], None]] = None) -> None:
    """Serve until SIGINT or SIGTERM, then drain and stop."""
    # A plain flag, not a threading.Event: a handler runs on the main thread between
    # bytecodes, and an Event.set() there, interrupting the main thread's own Event.wait()
    # (or a first handler's set()), takes the Event's lock again and deadlocked on a
    # second signal (SIGTERM sent twice, Ctrl-C pressed twice).
    stopping: list[int] = []
    previous: dict[int, Any] = {}
    try:
        url = start(cfg)
        # After start: ray.init installs its own SIGTERM handler (exit at once), which would
        # skip the drain.
        previous = {s: signal.signal(s, lambda signum, _frame: stopping.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
        if on_ready is not None:
            on_ready(url)
        while not stopping:
            time.sleep(0.2)
        logger.info("stopping: draining in-flight requests (up to %ss)", cfg.health.drain_timeout_s)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        stop(cfg)
