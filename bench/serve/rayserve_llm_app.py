"""Ray Serve LLM (`ray.serve.llm.build_openai_app`) on this machine's CPU, for the serving
benchmark: `python -m bench.serve.rayserve_llm_app CONFIG_JSON` serves until SIGTERM.

CONFIG_JSON: {"model": path, "model_id": name, "port": int, "engine_kwargs": {...}}. On a
CPU-only cluster its LLMConfig needs a placement group without GPUs (the same trick as
Ray Data LLM's `bundle_per_worker`, see FIELD-NOTES); access logs are off, as for the
other systems.
"""

from __future__ import annotations

import json
import signal
import sys
import threading


def main() -> None:
    cfg = json.loads(sys.argv[1])
    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    serve.start(
        http_options={"host": "127.0.0.1", "port": cfg["port"], "request_timeout_s": 900},
        logging_config={"enable_access_log": False},
    )
    llm = LLMConfig(
        model_loading_config={"model_id": cfg["model_id"], "model_source": cfg["model"]},
        engine_kwargs=cfg["engine_kwargs"],
        placement_group_config={"bundles": [{"CPU": 1}]},
        deployment_config={"num_replicas": 1},
    )
    serve.run(build_openai_app({"llm_configs": [llm]}), name="rayserve-llm", route_prefix="/")
    print("rayserve-llm: ready", flush=True)
    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
