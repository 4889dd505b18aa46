"""The `pipeline` command.

    pipeline run jobs/sample.yaml                      # a job spec
    pipeline run --input DATA --output OUT --tasks sentiment,translation --target-lang fr
    pipeline run --input batch.jsonl --format openai_batch --output OUT   # OpenAI batch requests (chat task)
    pipeline export OUT --format openai-batch          # results.jsonl + errors.jsonl of a published output
    pipeline runs OUT                                  # the ledger of runs of an output
    pipeline gc OUT                                    # delete what the output no longer needs
    pipeline report OUT                                # a run's summary: terminal tables and an HTML page
    pipeline show OUT --task sentiment -n 5            # a few results beside their input text
    pipeline models pull                               # prepare the default model once
    pipeline validate jobs/sample.yaml                 # check a spec, start nothing
    pipeline submit jobs/x.yaml --address http://HEAD:8265 --wait   # a job on a Ray cluster
    pipeline status|logs|stop JOB_ID                   # watch or stop it
    pipeline schedule jobs/x.yaml --format crontab     # a crontab line, systemd units or a CronJob
    pipeline eval jobs/eval/imdb_sentiment.yaml -n 200 --out imdb.json   # metrics on a labeled sample
    pipeline eval --compare a.yaml b.yaml              # two variants, with a bootstrap interval
    pipeline serve [serve.yaml] [--port 8000]          # the tasks online (Ray Serve), until Ctrl-C

Heavy imports (ray, vllm, torch) happen inside the commands, so --help is instant.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from typing import Any, Optional

from pipeline.errors import ExitStatus

logger = logging.getLogger("pipeline")


def _context_policies() -> tuple[str, ...]:
    """engine.context_policy's values, read from its config model (one list for run and serve)."""
    import typing

    from pipeline.config import EngineConfig

    literal = next(a for a in typing.get_args(EngineConfig.model_fields["context_policy"].annotation) if a is not type(None))
    return typing.get_args(literal)


def _task_flags() -> list[tuple[str, str, str, Any]]:
    """(task, field, flag, parse) for every task-specific setting of a simple type: the CLI
    flags are derived from the task registry, so a new task brings its own."""
    import typing

    from pipeline.tasks import TASKS, TaskConfig

    out, seen = [], {}
    for tname, cls in TASKS.items():
        for fname, f in cls.config_model.model_fields.items():
            if fname in TaskConfig.model_fields:
                continue
            ann = f.annotation
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            base = args[0] if typing.get_origin(ann) is typing.Union and len(args) == 1 else ann
            if base in (str, int, float):
                parse = base
            elif typing.get_origin(base) is typing.Literal:  # checked against its values by the config model
                parse = str
            elif typing.get_origin(base) is list:
                parse = _comma_list
            else:
                continue
            flag = "--" + fname.replace("_", "-")
            if flag in seen:  # the same name in two tasks: qualify both
                raise AssertionError(f"task flag {flag} of {tname} clashes with {seen[flag]}; rename one field")
            seen[flag] = tname
            out.append((tname, fname, flag, parse))
    return out


def _comma_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _put(over: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path ("engine.dtype") in a nested override dict; None (a flag not given) sets nothing."""
    if value is None:
        return
    node = over
    *head, last = path.split(".")
    for k in head:
        node = node.setdefault(k, {})
    node[last] = value


def _task_overrides(args: argparse.Namespace) -> tuple[Optional[list[str]], dict[str, dict[str, Any]]]:
    """--tasks (None when not given) and the task flags given, as {task: {field: value}}.
    A flag of a task that --tasks leaves out is a usage error."""
    from pipeline.errors import UsageError

    names = _comma_list(args.tasks) if args.tasks else None
    tasks: dict[str, dict[str, Any]] = {n: {} for n in names or []}
    for tname, fname, flag, _ in _task_flags():
        value = getattr(args, fname)
        if value is None:
            continue
        if names is not None and tname not in names:
            raise UsageError(f"{flag} is a setting of the {tname} task, which --tasks does not list")
        tasks.setdefault(tname, {})[fname] = value
    return names, tasks


def _spec_from_args(args: argparse.Namespace):
    from pydantic import ValidationError

    from pipeline.config import JobSpec, deep_merge
    from pipeline.errors import UsageError

    over: dict[str, Any] = {}
    put = functools.partial(_put, over)

    put("input.paths", args.input)
    put("input.format", args.format)
    put("input.text_field", args.text_field)
    put("input.id_field", args.id_field)
    put("output.path", args.output)
    put("output.rows_per_unit", args.rows_per_unit)
    put("model.path", args.model)
    put("engine.max_model_len", args.max_model_len)
    put("engine.dtype", args.dtype)
    put("engine.device", args.device)
    put("engine.batch_rows", args.batch_rows)
    put("engine.context_policy", args.context_policy)
    put("engine.hang_timeout_s", args.hang_timeout)
    put("resources.actors", args.actors)
    put("resources.ray_address", args.address)
    put("resources.max_actor_restarts", args.max_actor_restarts)
    if args.incremental:
        over["incremental"] = True
    # --tasks replaces the spec's task list; a task flag sets a field of its task (and, without
    # --tasks, enables that task: `--target-lang fr` alone adds translation).
    names, tasks = _task_overrides(args)
    if names is not None or tasks:
        over["tasks"] = tasks
    try:
        if args.spec:
            spec = JobSpec.from_yaml(args.spec, over)
        else:
            spec = JobSpec.model_validate(deep_merge({}, over))
    except ValidationError as e:
        raise UsageError(_validation_message(e, args.spec)) from None
    except (OSError, ValueError) as e:
        raise UsageError(str(e)) from None
    return spec


def _validation_message(e, spec_path: Optional[str]) -> str:
    where = f" in {spec_path}" if spec_path else ""
    lines = [f"invalid job{where}:"]
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)


def _open_run_log(plan) -> None:
    """Once the run is known: the log file moves into its folder (OUT/_runs/<run>/)."""
    from pipeline import logs

    logs.open_run_log(plan.store, plan.run_id)


def cmd_run(args: argparse.Namespace) -> int:
    spec = _spec_from_args(args)
    from pipeline.batch.runner import run

    _print_summary(run(spec, force=args.force, wait=args.wait, on_plan=_open_run_log))
    _export_batch_output(spec)
    return ExitStatus.OK


def _export_batch_output(spec) -> None:
    """A job over OpenAI batch files also gets its answers back in that format, once published."""
    if spec.input.format != "openai_batch":
        return
    from pipeline.ops.export import export_openai_batch

    _print_export(export_openai_batch(spec.output.path))


def _print_export(e) -> None:
    folder = e.folder.rstrip("/")
    state = "" if e.written else " (already up to date)"
    print(f"  OpenAI batch output{state}: {folder}/results.jsonl ({e.results:,} lines), "
          f"{folder}/errors.jsonl ({e.errors:,} lines)")


def _print_summary(s) -> None:
    """A RunSummary for a person."""
    print(f"\nrun {s.run_id}: {s.status}  output: {s.output}")
    if s.status == "up-to-date":
        print("  nothing to compute: every input row is already published (use --force to recompute)")
    print(f"  rows: {s.rows:,}  computed now: {s.rows_computed:,}  resumed: {s.rows_resumed:,}")
    for task, c in sorted(s.tasks.items()):
        cut = f"   cut at max_tokens or empty {c.truncated:,}" if c.truncated else ""
        print(f"  {task:<14} ok {c.ok:>8,}   failed {c.error:>6,}{cut}")
    if s.error_kinds:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(s.error_kinds.items()))
        print(f"  error records by kind (rows x tasks): {kinds}  (see errors/)")
    if s.read_errors_of_unknown_extent:
        print(f"  {s.read_errors_of_unknown_extent} input file(s) could not be read to their end and their record "
              "count is unknown: their read error stands for the rest of the file (retry-errors --kinds read_error)")
    print(f"  tokens in {s.prompt_tokens:,}  out {s.output_tokens:,}")
    if s.rows_per_second is not None:
        print(f"  throughput: {s.rows_per_second:,} rows/s, {s.output_tokens_per_second:,} output tok/s "
              f"(pipeline {s.pipeline_seconds}s, incl. engine start-up)")
    if s.output_tokens_per_second_after_startup is not None:
        print(f"  after start-up: {s.rows_per_second_after_startup:,} rows/s, "
              f"{s.output_tokens_per_second_after_startup:,} output tok/s, {s.tokens_per_second_after_startup:,} "
              f"prompt + output tok/s over {s.steady_seconds}s "
              f"(start-up {s.startup_seconds}s, of which engine load {s.engine_load_seconds}s)")
    u = s.flop_utilization
    if u is not None:
        if u.mfu is not None:
            print(f"  model FLOP utilization: {u.mfu:.1%} ({u.gflops_per_second:,} GFLOP/s of a measured "
                  f"{u.peak_gflops:,} GFLOP/s matrix peak)")
        else:
            print(f"  model FLOPs: {u.gflops_per_second:,} GFLOP/s; no utilization: {u.note}")
    b = s.startup_breakdown
    if b:
        print(f"  start-up: plan {b.plan}s, Ray {b.ray_init}s, until the first actor ran {b.until_actor}s, "
              f"its imports and engine load {b.actor_to_engine_ready}s")
    if s.actor_generate_seconds:
        print(f"  actors: {s.actor_prepare_seconds}s rendering prompts, {s.actor_generate_seconds}s waiting on "
              f"engines (summed over batches in flight), {s.commit_seconds}s committing")
    if s.prefix_cache_hit_rate is not None:
        print(f"  prefix cache: {s.prefix_cache_hit_rate:.1%} of prompt tokens served from the cache")
    if s.commit_seconds is not None:
        print(f"  commits: {s.commit_seconds}s writing parts (summed over actors), {s.publish_seconds}s publishing")
    if s.evaluation is not None:
        from pipeline.eval.report import summary_lines

        for line in summary_lines(s.evaluation.model_dump(mode="json", exclude_none=True)):
            print(line)
    print(f"  wall time: {s.wall_seconds}s")
    if s.output and s.kind == "run":
        print(f"  summary: {s.output.rstrip('/')}/summary.json")
    if s.output and s.status == "published":
        print(f"  report: pipeline report {s.output}   results: pipeline show {s.output} --task TASK")


def cmd_retry_errors(args: argparse.Namespace) -> int:
    spec = _spec_from_args(args)
    from pipeline.batch.retry import retry_errors
    from pipeline.errors import ErrorKind, UsageError

    kinds = tuple(_comma_list(args.kinds))
    unknown = sorted(set(kinds) - {k.value for k in ErrorKind})
    if unknown:
        raise UsageError(f"--kinds: unknown error kind(s) {', '.join(unknown)}; known: {', '.join(k.value for k in ErrorKind)}")
    _print_summary(retry_errors(spec, kinds, force=args.force, wait=args.wait, on_plan=_open_run_log))
    _export_batch_output(spec)
    return ExitStatus.OK


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.ops.export import export_openai_batch

    print(f"version published in {args.output}:")
    _print_export(export_openai_batch(args.output, to=args.to, force=args.force))
    return ExitStatus.OK


def _parse_label_map(text: Optional[str]) -> dict[str, str]:
    from pipeline.errors import UsageError

    out: dict[str, str] = {}
    for item in _comma_list(text or ""):
        gold, sep, label = item.partition("=")
        if not sep or not gold.strip() or not label.strip():
            raise UsageError(f"--label-map wants GOLD=LABEL pairs separated by commas, got {item!r}")
        out[gold.strip()] = label.strip()
    return out


def _eval_spec(args: argparse.Namespace, spec_path: Optional[str], output: str):
    """One variant's spec, with the gold column from the flags (if given) and only the graded tasks."""
    from pydantic import ValidationError

    from pipeline.config import JobSpec
    from pipeline.errors import UsageError

    args.spec, args.output = spec_path, output
    spec = _spec_from_args(args)
    data = spec.model_dump(mode="json")
    ev = data.get("evaluation") or {}
    if args.reference_field:
        enabled = list(spec.tasks.enabled())
        task = args.task or (enabled[0] if len(enabled) == 1 else None)
        if task is None:
            raise UsageError(f"--reference-field: say which task it grades (--task), one of {', '.join(enabled)}")
        ev = {"references": {task: args.reference_field}, "label_map": ev.get("label_map") or {}}
    elif args.task and ev.get("references"):
        ev["references"] = {t: f for t, f in ev["references"].items() if t == args.task}
    if not ev.get("references"):
        raise UsageError("nothing to grade against: give --reference-field FIELD (the gold label or "
                         "reference text column) or evaluation.references in the spec")
    if args.label_map:
        ev["label_map"] = _parse_label_map(args.label_map)
    data["evaluation"] = ev
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        raise UsageError(_validation_message(e, spec_path)) from None


def cmd_eval(args: argparse.Namespace) -> int:
    import shutil
    import tempfile
    from pathlib import Path

    from pipeline.errors import UsageError

    if args.compare and args.spec:
        raise UsageError("give either one spec or --compare A.yaml B.yaml (the other flags apply to both)")
    if args.rows is not None and args.rows < 1:
        raise UsageError("-n must be at least 1")
    if args.output and "://" in args.output:
        raise UsageError("--output of pipeline eval is a local folder (where the eval runs write)")
    workdir = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="pipeline-eval-"))
    sources = list(args.compare) if args.compare else [args.spec]
    names = ["a", "b"] if args.compare else ["a"]
    specs = [_eval_spec(args, src, str(workdir / n)) for src, n in zip(sources, names)]

    from pipeline.eval.report import eval_text
    from pipeline.eval.run import compare, evaluate

    try:
        results = [evaluate(spec, workdir, rows=args.rows, name=n, source=src or "flags", force=args.force)
                   for spec, n, src in zip(specs, names, sources)]
        result: dict[str, Any] = {"variants": {r.name: r.as_dict() for r in results}}
        if len(results) == 2:
            result["comparison"] = compare(*results, resamples=args.resamples)
        print("\n" + eval_text(result), end="")
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            print(f"written: {args.out}")
    finally:
        if not args.output:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.output:
        print(f"eval runs' outputs: {workdir}")
    return ExitStatus.OK


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.report import build_report

    build_report(args.output, run_id=args.run, html_path=args.html, write_html=not args.no_html)
    return ExitStatus.OK


def cmd_show(args: argparse.Namespace) -> int:
    from pipeline.report.show import show

    show(args.output, task=args.task, n=args.n, run_id=args.run, seed=args.seed, width=args.width)
    return ExitStatus.OK


def cmd_validate(args: argparse.Namespace) -> int:
    spec = _spec_from_args(args)
    print(json.dumps(spec.model_dump(), indent=2))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from pipeline.io.commit import read_manifest
    from pipeline.io.store import Store

    store = Store(args.output)
    manifest = read_manifest(store)
    published = set(manifest.runs if manifest else [])
    entries = [store.read_json(rel) for rel in store.list("_runs", suffix=".json")]
    entries = sorted((e for e in entries if e), key=lambda e: e.get("started_at", 0))
    if args.json:
        print(json.dumps(entries, indent=1))
        return 0
    print(f"{'run':<14}{'status':<12}{'live':<6}{'files':>6}{'rows':>10}  started")
    import datetime as dt

    for e in entries:
        started = dt.datetime.fromtimestamp(e.get("started_at", 0)).isoformat(timespec="seconds")
        rows = e.get("summary", {}).get("rows", "")
        live = "yes" if e["run_id"] in published else ""
        print(f"{e['run_id']:<14}{e.get('status', '?'):<12}{live:<6}{len(e.get('inputs', [])):>6}{rows:>10}  {started}")
    if manifest:
        print(f"published version {manifest.version}")
    from pipeline.io.lease import read_lease

    lease = read_lease(store)
    if lease is not None and not lease.released:
        import time

        print(f"writer: {lease.describe(time.time())}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from pipeline.io.housekeeping import collect_garbage
    from pipeline.io.lease import WriterLease
    from pipeline.io.store import Store

    store = Store(args.output)
    with WriterLease(store, owner="gc", command="gc", wait=args.wait):
        report = collect_garbage(store, args.retention_hours * 3600, dry_run=args.dry_run)
    print(("would remove: " if args.dry_run else "removed: ") + report.line())
    return ExitStatus.OK


def _serve_config_from_args(args: argparse.Namespace):
    from pydantic import ValidationError

    from pipeline.config import ServeConfig, deep_merge
    from pipeline.errors import UsageError

    over: dict[str, Any] = {}
    put = functools.partial(_put, over)

    for path, value in [
        ("model.path", args.model),
        ("engine.max_model_len", args.max_model_len),
        ("engine.max_num_seqs", args.max_num_seqs),
        ("engine.kv_cache_gib", args.kv_cache_gib),
        ("engine.dtype", args.dtype),
        ("engine.device", args.device),
        ("engine.context_policy", args.context_policy),
        ("http.host", args.host),
        ("http.port", args.port),
        ("limits.max_texts", args.max_texts),
        ("limits.max_chars", args.max_chars),
        ("limits.max_tokens", args.max_tokens),
        ("limits.max_body_bytes", args.max_body_bytes),
        ("limits.request_timeout_s", args.request_timeout),
        ("admission.max_texts_in_flight", args.max_texts_in_flight),
        ("admission.max_queued_requests", args.max_queued_requests),
        ("admission.reject_status", args.reject_status),
        ("admission.retry_after_s", args.retry_after),
        ("auth.api_keys_file", args.api_keys_file),
        ("auth.api_keys_env", args.api_keys_env),
        ("resources.replicas", args.replicas),
        ("resources.cpus_per_replica", args.cpus_per_replica),
        ("resources.ray_address", args.address),
        ("resources.num_cpus", args.num_cpus),
        ("health.drain_timeout_s", args.drain_timeout),
        ("health.stall_timeout_s", args.stall_timeout),
    ]:
        put(path, value)
    if args.min_replicas is not None or args.max_replicas is not None:
        put("resources.autoscaling.min_replicas", args.min_replicas)
        put("resources.autoscaling.max_replicas", args.max_replicas)
    # --tasks picks the task routes; a task flag sets that route's default (and, without
    # --tasks, leaves every route on).
    names, defaults = _task_overrides(args)
    if names is not None:
        over["tasks"] = defaults
    elif defaults:
        from pipeline.config import SERVED_TASKS

        over["tasks"] = {n: defaults.get(n, {}) for n in SERVED_TASKS}
    try:
        if args.spec:
            return ServeConfig.from_yaml(args.spec, over)
        return ServeConfig.model_validate(deep_merge({}, over))
    except ValidationError as e:
        raise UsageError(_validation_message(e, args.spec).replace("invalid job", "invalid serve spec", 1)) from None
    except (OSError, ValueError) as e:
        raise UsageError(str(e)) from None


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _serve_config_from_args(args)
    if args.check:
        print(json.dumps(cfg.model_dump(), indent=2))
        return ExitStatus.OK
    from pipeline.serve.deployment import run

    def ready(url: str) -> None:
        routes = ", ".join(f"/v1/{r}" for r in _serve_routes(cfg))
        auth = "API keys required" if cfg.auth.enabled else "no auth"
        print(f"serving on {url} ({routes}; {auth}); docs at {url}/docs. Ctrl-C drains and stops.", flush=True)

    run(cfg, on_ready=ready)
    return ExitStatus.OK


def _serve_routes(cfg) -> list[str]:
    from pipeline.tasks import TASKS

    return [TASKS[n].route for n in cfg.task_routes()] + ["chat/completions", "completions", "models"]


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    from pipeline.tasks import TASKS

    p.add_argument("spec", nargs="?", help="serve spec (YAML); flags below override its fields")
    p.add_argument("--check", action="store_true", help="validate and print the resolved config; start nothing")
    p.add_argument("--model", metavar="DIR", help="local Hugging Face model folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default 8000)")
    from pipeline.config import SERVED_TASKS

    p.add_argument("--tasks", help=f"task routes to serve, comma-separated, of: {','.join(SERVED_TASKS)} (default: all)")
    for tname, fname, flag, parse in _task_flags():
        field = TASKS[tname].config_model.model_fields[fname]
        p.add_argument(flag, dest=fname, type=parse, metavar=fname.upper(),
                       help=f"{tname} default: {field.description or fname}" + (" (comma-separated)" if parse is _comma_list else ""))
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--max-num-seqs", type=int, help="sequences the engine batches at once")
    p.add_argument("--kv-cache-gib", type=float, help="CPU: KV cache per engine, GiB")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--context-policy", choices=_context_policies(),
                   help="text longer than the context, for every task (default: each task's own, split)")
    p.add_argument("--max-texts", type=int, help="texts per request")
    p.add_argument("--max-chars", type=int, help="characters per text")
    p.add_argument("--max-tokens", type=int, help="cap on the tokens one answer may generate")
    p.add_argument("--max-body-bytes", type=int, help="largest request body")
    p.add_argument("--request-timeout", type=float, help="seconds before a request gets 504 (its generation aborted)")
    p.add_argument("--max-texts-in-flight", type=int, help="per replica: texts in its engine at once; past it 503/429 at once")
    p.add_argument("--max-queued-requests", type=int, help="Ray Serve: requests a proxy queues before turning more away")
    p.add_argument("--reject-status", type=int, choices=[503, 429], help="status for a request turned away for load")
    p.add_argument("--retry-after", type=int, help="Retry-After seconds on 503/429")
    p.add_argument("--api-keys-file", metavar="FILE", help="API keys, one per line: clients send 'Authorization: Bearer KEY'")
    p.add_argument("--api-keys-env", metavar="VAR", help="environment variable holding API keys (comma-separated)")
    p.add_argument("--replicas", type=int, help="replicas (one engine each)")
    p.add_argument("--min-replicas", type=int, help="autoscaling: fewest replicas")
    p.add_argument("--max-replicas", type=int, help="autoscaling: most replicas")
    p.add_argument("--cpus-per-replica", type=float)
    p.add_argument("--address", help="Ray cluster address (default: a local cluster in-process)")
    p.add_argument("--num-cpus", type=int, help="logical CPUs of the local cluster")
    p.add_argument("--drain-timeout", type=float, help="seconds in-flight requests get to finish on shutdown")
    p.add_argument("--stall-timeout", type=float, help="seconds busy without a token before a replica is replaced")


def cmd_models(args: argparse.Namespace) -> int:
    from pipeline.engine.models import default_model_path, ensure_default_model

    if args.action == "path":
        print(default_model_path())
        return ExitStatus.OK
    print(ensure_default_model(force=args.force))
    return ExitStatus.OK


# -- jobs on a cluster, schedules (pipeline/ops) -----------------------------------------
def _ops(fn):
    """Run an ops command: a PipelineError becomes one line on stderr and its exit status."""

    def wrapped(args: argparse.Namespace) -> int:
        from pipeline.errors import PipelineError

        try:
            return int(fn(args))
        except PipelineError as e:
            print(f"error: {e}", file=sys.stderr)
            return int(e.exit_status)
        except KeyboardInterrupt:
            print("interrupted; a submitted job goes on (`pipeline stop JOB` stops it)", file=sys.stderr)
            return 130

    return wrapped


def _job_end(client: Any, info: Any) -> int:
    from pipeline.ops import submit as ops

    status = ops.exit_status(info)
    if status == 0:
        print(f"{info.submission_id}: {info.status}")
    else:
        why = ops.last_error_line(client, info.submission_id) or info.message or ""
        print(f"error: job {info.submission_id} {info.status}: {why} (pipeline logs {info.submission_id})",
              file=sys.stderr)
    return status


@_ops
def cmd_submit(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from pipeline.ops import package
    from pipeline.ops import submit as ops

    checkout = package.find_checkout(Path(args.working_dir).resolve() if args.working_dir else None)
    with tempfile.TemporaryDirectory(prefix="pipeline-submit-") as scratch:
        pkg = package.build_package(args.spec, checkout, incremental=args.incremental, scratch=Path(scratch))
        client = ops.connect(args.address)
        sub = ops.submit(client, pkg)
    print(sub.job_id, flush=True)
    if sub.previous:
        what = ("it finds the published output up to date, or computes only what changed"
                if sub.previous.endswith("SUCCEEDED") else "the run resumes from its committed parts")
        print(f"attempt {sub.attempt} (before it: {sub.previous}): {what}", file=sys.stderr)
    if args.follow:
        ops.follow_logs(client, sub.job_id)
    if args.wait or args.follow:
        return _job_end(client, ops.wait(client, sub.job_id))
    return 0


@_ops
def cmd_status(args: argparse.Namespace) -> int:
    from pipeline.ops import submit as ops

    client = ops.connect(args.address)
    info = ops.wait(client, args.job_id) if args.wait else ops.job_info(client, args.job_id)
    print(ops.describe(info))
    return ops.exit_status(info) if args.wait else 0


@_ops
def cmd_logs(args: argparse.Namespace) -> int:
    from pipeline.ops import submit as ops

    client = ops.connect(args.address)
    if args.follow:
        ops.follow_logs(client, args.job_id)
    else:
        ops.job_info(client, args.job_id)
        sys.stdout.write(client.get_job_logs(args.job_id))
    return 0


@_ops
def cmd_stop(args: argparse.Namespace) -> int:
    from pipeline.ops import submit as ops

    client = ops.connect(args.address)
    info = ops.stop(client, args.job_id, timeout=args.timeout)
    print(f"{info.submission_id}: {info.status}")
    return 0


@_ops
def cmd_schedule(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline.ops import schedule

    job = schedule.load(args.spec, lock_dir=args.lock_dir, log_dir=args.log_dir)
    files = schedule.render(job, args.format, address=args.address, image=args.image)
    if args.write:
        out = Path(args.write)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (out / name).write_text(text)
            print(out / name)
        return 0
    for name, text in files.items():
        if len(files) > 1:
            print(f"# ---- {name} ----")
        sys.stdout.write(text)
    return 0


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS "
                   "or RAY_ADDRESS). A token-protected cluster's token comes from RAY_AUTH_TOKEN, "
                   "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token")


def _add_ops_commands(sub: Any) -> None:
    p = sub.add_parser("submit", help="submit a job spec to a Ray cluster (Jobs API); prints the job id")
    p.add_argument("spec", help="job spec (YAML); relative paths travel with the project (see README)")
    _add_address(p)
    p.add_argument("--wait", action="store_true", help="wait for the job to end; exit status as `pipeline run`")
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends (implies --wait)")
    p.add_argument("--incremental", action="store_true", help="only input files no earlier run committed")
    p.add_argument("--working-dir", metavar="DIR", help="project folder to upload (default: this checkout)")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="status of a submitted job")
    p.add_argument("job_id")
    _add_address(p)
    p.add_argument("--wait", action="store_true", help="wait until it ends; exit status as the job's")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="logs of a submitted job")
    p.add_argument("job_id")
    _add_address(p)
    p.add_argument("-f", "--follow", action="store_true", help="keep streaming until the job ends")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("stop", help="stop a submitted job (a later submit of the same spec resumes it)")
    p.add_argument("job_id")
    _add_address(p)
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for it to stop")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("schedule", help="render a spec's schedule for crontab, systemd or Kubernetes")
    p.add_argument("spec", help="job spec with a `schedule:` (cron syntax)")
    p.add_argument("--format", choices=["crontab", "systemd", "kubernetes"], default="crontab")
    p.add_argument("--write", metavar="DIR", help="write the file(s) into DIR instead of printing them")
    p.add_argument("--lock-dir", metavar="DIR", help="lock files (default ~/.cache/pipeline/locks)")
    p.add_argument("--log-dir", metavar="DIR", help="crontab: log files (default ~/.cache/pipeline/logs)")
    p.add_argument("--address", help="kubernetes: the RayCluster's dashboard URL as pods see it")
    p.add_argument("--image", help="kubernetes: an image with this project installed at /app")
    p.set_defaults(func=cmd_schedule)


def _add_job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", nargs="?", help="job spec (YAML); flags below override its fields")
    p.add_argument("--input", nargs="+", metavar="PATH", help="files, folders, globs, s3:// or http(s):// URIs")
    p.add_argument("--output", metavar="DIR", help="output folder (local or s3://)")
    from pipeline.tasks import TASKS

    p.add_argument("--tasks", help=f"comma-separated, of: {','.join(TASKS)}")
    for tname, fname, flag, parse in _task_flags():
        field = TASKS[tname].config_model.model_fields[fname]
        p.add_argument(flag, dest=fname, type=parse, metavar=fname.upper(),
                       help=f"{tname}: {field.description or fname}" + (" (comma-separated)" if parse is _comma_list else ""))
    p.add_argument("--model", metavar="DIR", help="local Hugging Face model folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--text-field", help="column with the text (default: text)")
    p.add_argument("--id-field", help="column with a unique row id (default: source file and position)")
    p.add_argument("--format", choices=["auto", "jsonl", "csv", "text", "parquet", "openai_batch"],
                   help="record format (default: by extension); openai_batch: OpenAI batch request lines, for the chat task")
    p.add_argument("--rows-per-unit", type=int, help="rows per commit unit (resume granularity)")
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-rows", type=int, help="rows handed to an engine at once")
    p.add_argument("--hang-timeout", type=float, help="seconds without a finished request before an engine counts as dead")
    p.add_argument("--context-policy", choices=_context_policies(),
                   help="text longer than the context, for every task (default: each task's own, split)")
    p.add_argument("--actors", type=int, help="inference actors (one engine each)")
    p.add_argument("--max-actor-restarts", type=int, help="restarts per inference actor before the run fails")
    p.add_argument("--address", help="Ray cluster address (default: a local cluster in-process)")
    p.add_argument("--incremental", action="store_true", help="only input files no earlier run committed")
    p.add_argument("--force", action="store_true",
                   help="run: recompute even if this exact run is already published; "
                        "retry-errors: retry even though the spec differs from the published configuration")
    p.add_argument("--wait", action="store_true",
                   help="if another run is writing the output, wait for it instead of exiting with status 3")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show every library's logs (Ray, vLLM) on the terminal, not only ours")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description="Batch LLM inference over text corpora (Ray Data + vLLM).")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show every library's logs (Ray, vLLM) on the terminal, not only ours; debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a batch job (resumes an interrupted one)")
    _add_job_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("retry-errors", help="reprocess error records (dead letters) into the same output")
    _add_job_args(p)
    from pipeline.batch.retry import RETRYABLE_KINDS

    p.add_argument("--kinds", default=",".join(RETRYABLE_KINDS), help="error kinds to retry (comma-separated)")
    p.set_defaults(func=cmd_retry_errors)

    p = sub.add_parser("eval", help="grade tasks on a labeled or referenced sample; compare two variants",
                       description="Run the task(s) over the input rows that have a gold label or reference text, "
                       "through the normal batch path, and report accuracy/macro-F1 (sentiment), ROUGE-1/2/L and "
                       "the lead-sentence baseline (summarization), chrF/BLEU (translation), and the share of "
                       "outputs cut at max_tokens, empty or repeating themselves. --output DIR keeps the eval "
                       "runs there (a rerun of the same variant computes nothing); default: a temporary folder.")
    _add_job_args(p)
    p.add_argument("--reference-field", metavar="FIELD", help="input column with the gold label or reference text "
                   "(default: the spec's evaluation.references)")
    p.add_argument("--task", help="the task FIELD grades (needed when several tasks are enabled)")
    p.add_argument("--label-map", metavar="GOLD=LABEL,...", help="sentiment: gold values to labels, e.g. 1=positive,0=negative")
    p.add_argument("-n", "--rows", type=int, help="grade the first N rows that have text and a gold value (default: all)")
    p.add_argument("--compare", nargs=2, metavar=("A.yaml", "B.yaml"),
                   help="two variants (prompts, models, sampling) over the same rows: differences with a paired "
                   "bootstrap 95%% interval; the other flags apply to both")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for --compare")
    p.add_argument("--out", metavar="FILE.json", help="write the results as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("validate", help="validate a job spec and print it resolved; starts nothing")
    _add_job_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("serve", help="serve the tasks (and OpenAI-compatible routes) over HTTP on Ray Serve")
    _add_serve_args(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("runs", help="list the runs recorded in an output folder")
    p.add_argument("output")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("gc", help="delete files no version within the retention needs, abandoned staging, temp files")
    p.add_argument("output")
    p.add_argument("--retention-hours", type=float, default=168.0,
                   help="keep anything younger than this (default 168: a week, as the jobs' default)")
    p.add_argument("--dry-run", action="store_true", help="list, delete nothing")
    p.add_argument("--wait", action="store_true", help="wait for a writer holding the output")
    p.set_defaults(func=cmd_gc)
    p = sub.add_parser("report", help="a run's summary for a person: tables here and an HTML page with charts")
    p.add_argument("output", help="the output folder of a run")
    p.add_argument("--run", help="run id (default: the last run, as in OUT/summary.json)")
    p.add_argument("--html", metavar="FILE", help="write the page here (default: OUT/_runs/<run>/report.html)")
    p.add_argument("--no-html", action="store_true", help="tables on the terminal only")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("show", help="a few results beside their input text")
    p.add_argument("output", help="the output folder of a run")
    from pipeline.tasks import TASKS as _TASKS

    p.add_argument("--task", required=True, choices=list(_TASKS))
    p.add_argument("-n", type=int, default=5, help="how many rows (default 5)")
    p.add_argument("--run", help="only this run's rows (default: all published rows)")
    p.add_argument("--seed", type=int, default=None, help="pick rows at random with this seed (default: the first rows)")
    p.add_argument("--width", type=int, default=None, help="characters of input text to show (default: fit the terminal)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("export", help="write a published output in another format (OpenAI batch output files)")
    p.add_argument("output", help="output folder (local or s3://)")
    p.add_argument("--format", choices=["openai-batch"], default="openai-batch",
                   help="openai-batch: the chat task's answers as results.jsonl and errors.jsonl, keyed by custom_id")
    p.add_argument("--to", metavar="DIR", help="where to write them (default OUTPUT/openai)")
    p.add_argument("--force", action="store_true", help="write them even if they are up to date")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("models", help="the default model: prepare it ('pull') or print its path")
    p.add_argument("action", choices=["pull", "path"])
    p.add_argument("--force", action="store_true", help="rebuild even if present")
    p.set_defaults(func=cmd_models)

    _add_ops_commands(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from pipeline import logs
    from pipeline.errors import PipelineError

    # A run's terminal shows our lines only; everything else goes to the run's log file
    # (pipeline/logs.py). Other commands print little and keep the usual streams.
    term = logs.setup(verbose=args.verbose, capture=args.command in ("run", "retry-errors"))
    failed = True
    try:
        status = int(args.func(args) or ExitStatus.OK)
        failed = status != ExitStatus.OK
        return status
    except PipelineError as e:
        # One line (or a short block for a spec with several bad fields) a person can act on;
        # the traceback goes to the log file (to the terminal with --verbose).
        logger.debug("failed", exc_info=True, extra={"terminal": args.verbose})
        print(f"error: {e}", file=term.stream)
        # Meant for a person, it says it all: no temporary log to point at (a run's own log
        # is in its folder, and a run failure names it).
        failed = False
        return int(e.exit_status)
    except KeyboardInterrupt:
        print("interrupted: committed parts are kept; the same command resumes", file=term.stream)
        return 130
    except Exception as e:  # a bug or an unexpected failure: one line here, the traceback in the log
        if args.verbose or logs.log_path() is None:
            raise
        logger.error("unexpected error", exc_info=True, extra={"terminal": False})
        print(f"error: {logs.root_cause(e)} (traceback in {logs.log_path()})", file=term.stream)
        return int(ExitStatus.FAILED)
    finally:
        logs.close(keep_temp=failed)


if __name__ == "__main__":  # vLLM spawns processes: entry points need this guard
    sys.exit(main())
