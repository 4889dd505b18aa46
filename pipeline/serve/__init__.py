"""The online endpoint: a Ray Serve application answering the pipeline's tasks over HTTP,
plus OpenAI-compatible routes, on the same engine wrapper and the same `execute` as the
batch path.

    HTTP ─▶ Ray Serve proxy (bounded queue) ─▶ replica: FastAPI app
              auth ─▶ body limit ─▶ route (validation, limits, admission, timeout)
              ─▶ execute(task, text, engine, ctx)  (pipeline/tasks/execute.py)
              ─▶ the same result fields as a batch row

Modules, one concept each:
    schemas.py     request and response models (the OpenAPI document is generated from them)
    limits.py      body size, per-request limits, admission of work into the engine
    auth.py        API keys: loading and the bearer check
    health.py      liveness, readiness and the replica health check, from the engine's state
    service.py     one replica's state: engine, tasks, admission, timeouts, error answers
    routes.py      the task routes, /v1/models and the health routes
    openai.py      /v1/chat/completions and /v1/completions (streaming included)
    app.py         the FastAPI application put together from the above
    deployment.py  the Ray Serve deployment and `run` (what `pipeline serve` calls)

Nothing here imports Ray, vLLM or FastAPI at package import time.
"""
