"""What a person sees on the terminal during a run, and where everything else goes.

By default the terminal shows our lines only: the `pipeline` loggers at INFO and above,
the progress display and the summary. Everything else goes to the run's log file,
`OUT/_runs/<run>/pipeline.log` (its path printed once):

- Python loggers of other libraries (Ray, Ray Data, vLLM, torch) in the driver;
- what the driver process writes to file descriptor 2 below Python: Ray's core worker
  logs its C++ messages there (the `core_worker.cc` line at level E about actor
  constructor arguments), and so do native libraries;
- every line the inference actors and read tasks print, which Ray forwards to the driver
  (`log_to_driver`): vLLM's logs and loading bars, Triton and NUMA-binding warnings, the
  engine core's tracebacks. Lines that our own loggers print in those workers are
  recognized by a prefix (`setup_worker`) and shown as ours; a few library lines that a
  person must act on are translated into one line of ours (`TRANSLATIONS`), once each.

`pipeline -v` shows everything as it comes, as before. A library calling `run()` directly
(no `setup`) keeps Ray's and Python's defaults: nothing here is global until the CLI
asks for it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Optional, TextIO

logger = logging.getLogger(__name__)

LOG_NAME = "pipeline.log"
# What our loggers in Ray workers put before each line, so that the driver knows them.
WORKER_PREFIX = "\x1fpipeline\x1f"
_WORKER_LINE = re.compile(r"^\x1fpipeline\x1f(?P<level>[A-Z]+)\x1f(?P<name>[\w.]+)\x1f(?P<msg>.*)$")
# A line that states an exception, as the last line of a Python traceback does.
EXC_LINE = re.compile(r"(?:^|\] |\s)(?P<exc>(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit)): (?P<msg>.+)$")


@dataclasses.dataclass(frozen=True)
class Translation:
    """A library line a person must act on, and the line of ours that says so."""

    pattern: re.Pattern
    message: str  # formatted with the pattern's named groups
    level: int = logging.WARNING


TRANSLATIONS = (
    Translation(
        re.compile(r"No available node types can fulfill resource request (?P<req>\{[^}]*\})"),
        "waiting for resources: an actor or task asks for {req}, which no node of the cluster can give "
        "(lower resources.cpus_per_actor or resources.actors, or add nodes)",
    ),
    Translation(
        re.compile(r"cannot be scheduled right now: (?P<req>\{[^}]*\})"),
        "waiting for resources: {req} cannot be scheduled now (the cluster is busy or too small)",
    ),
    Translation(
        re.compile(r"preempted by PreemptionMode|[Pp]reempt(?:ed|ing) .*KV cache"),
        "the KV cache is full: the engine preempts and recomputes requests (slower); raise engine.kv_cache_gib "
        "or lower engine.max_num_seqs / engine.batch_rows",
    ),
    Translation(
        re.compile(r"(?:Task|Actor) was killed due to the node running low on memory|OutOfMemoryError"),
        "a worker ran out of memory and was killed (Ray's memory monitor); lower engine.batch_rows or "
        "engine.kv_cache_gib, or use fewer actors per node",
        logging.ERROR,
    ),
    Translation(
        re.compile(r"Available memory on node .* is less than desired"),
        "the engine could not reserve its KV cache: lower engine.kv_cache_gib",
        logging.ERROR,
    ),
)


class Terminal:
    """Where a person reads: a rich Console on the original stderr (kept aside when file
    descriptor 2 is sent to the log file), and whether it is a terminal."""

    def __init__(self, stream: TextIO):
        from rich.console import Console

        self.stream = stream
        self.interactive = bool(getattr(stream, "isatty", lambda: False)())
        # highlight off: our lines are plain text; soft_wrap keeps long paths on one line.
        self.console = Console(file=stream, highlight=False, soft_wrap=True, force_terminal=self.interactive or None)


class _TerminalHandler(logging.Handler):
    """Our lines on the terminal, through rich so that they print above a live progress bar."""

    def __init__(self, terminal: Terminal, everything: bool):
        super().__init__(logging.DEBUG if everything else logging.INFO)
        self.terminal = terminal
        self.everything = everything

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "terminal", True) is False:
            return False
        return self.everything or record.name == "pipeline" or record.name.startswith("pipeline.")

    def emit(self, record: logging.LogRecord) -> None:
        from rich.text import Text

        try:
            msg = record.getMessage()
            when = time.strftime("%H:%M:%S", time.localtime(record.created))
            if record.levelno >= logging.WARNING:
                msg = f"{record.levelname.lower()}: {msg}"
            if self.everything and not record.name.startswith("pipeline"):
                msg = f"{record.name}: {msg}"
            style = "red" if record.levelno >= logging.ERROR else "yellow" if record.levelno >= logging.WARNING else None
            self.terminal.console.print(Text(f"{when} {msg}", style=style or ""))
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


@dataclasses.dataclass
class _State:
    terminal: Terminal
    verbose: bool
    file_handler: Optional[logging.Handler] = None
    log_path: Optional[str] = None  # local file the log is written to now
    upload: Optional[Callable[[bytes], None]] = None  # for outputs not on this machine
    saved_fd2: Optional[int] = None
    last_error_line: Optional[str] = None  # the latest exception line a worker printed
    said: set = dataclasses.field(default_factory=set)  # translations already shown


_state: Optional[_State] = None
_lock = threading.Lock()


def terminal() -> Terminal:
    """The terminal set up by the CLI, or plain stderr for library use."""
    return _state.terminal if _state else Terminal(sys.stderr)


def verbose() -> bool:
    return bool(_state and _state.verbose)


def quiet_children() -> bool:
    """Before ray.init: the environment Ray's workers (actors, Serve replicas) inherit. vLLM's
    start-up warnings (Triton, tcmalloc hints) and Python's FutureWarnings would drown our
    lines; `pipeline -v` keeps vLLM's INFO. Returns whether -v was given."""
    loud = logging.getLogger("pipeline").isEnabledFor(logging.DEBUG)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if loud else "ERROR")
    if not loud:
        os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
    return loud


def setup(verbose: bool = False, capture: bool = True) -> Terminal:
    """Route logs for the `pipeline` command. capture: send file descriptor 2 and library logs
    to a log file (first a temporary one; `open_run_log` moves it into the run's folder)."""
    global _state
    if verbose or not capture:
        term = Terminal(sys.stderr)
        root = logging.getLogger()
        root.setLevel(logging.DEBUG if verbose else logging.WARNING)
        root.addHandler(_TerminalHandler(term, everything=verbose))
        logging.getLogger("pipeline").setLevel(logging.DEBUG if verbose else logging.INFO)
        _state = _State(term, verbose)
        return term

    sys.stderr.flush()
    saved = os.dup(2)
    term = Terminal(os.fdopen(saved, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False))
    fd, path = tempfile.mkstemp(prefix="pipeline-", suffix=".log")
    os.dup2(fd, 2)  # C-level writes of this process (Ray's core worker, native libraries)
    os.close(fd)
    _state = _State(term, False, saved_fd2=saved, log_path=path)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(_TerminalHandler(term, everything=False))
    _state.file_handler = _file_handler(path)
    root.addHandler(_state.file_handler)
    logging.getLogger("pipeline").setLevel(logging.DEBUG)
    logging.captureWarnings(True)  # Python warnings become log records (of py.warnings): to the file
    return term


def _file_handler(path: str) -> logging.Handler:
    h = logging.FileHandler(path, encoding="utf-8")
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    h.setLevel(logging.DEBUG)
    return h


def open_run_log(store: Any, run_id: str) -> Optional[str]:
    """Move the log into the run's folder (OUT/_runs/<run>/pipeline.log, appended to by every
    attempt of the run) and say where it is, once. Outputs on object storage get the file
    uploaded at the end (`close`); until then it is a local file."""
    if _state is None or _state.saved_fd2 is None:
        return None
    rel = f"_runs/{run_id}/{LOG_NAME}"
    with _lock:
        old = _state.log_path
        if store.local:
            new = store.path(rel)
            os.makedirs(os.path.dirname(new), exist_ok=True)
        else:
            new = os.path.join(tempfile.gettempdir(), f"pipeline-{run_id}.log")
            _state.upload = lambda data: store.write_bytes(rel, data)
        sys.stderr.flush()
        with open(new, "ab") as dst:
            dst.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {' '.join(sys.argv)}\n".encode())
            if old and os.path.exists(old) and old != new:
                with open(old, "rb") as src:
                    dst.write(src.read())
        fd = os.open(new, os.O_WRONLY | os.O_APPEND)
        os.dup2(fd, 2)
        os.close(fd)
        root = logging.getLogger()
        if _state.file_handler is not None:
            root.removeHandler(_state.file_handler)
            _state.file_handler.close()
        _state.file_handler = _file_handler(new)
        root.addHandler(_state.file_handler)
        if old and old != new:
            try:
                os.unlink(old)
            except OSError:
                pass
        _state.log_path = new
    logger.info("log: %s", store.uri(rel))
    return new


def log_path() -> Optional[str]:
    return _state.log_path if _state else None


def close(keep_temp: bool = False) -> None:
    """At exit: upload a run log kept locally for a remote output; drop a temporary log that
    no run claimed (unless keep_temp, e.g. after a failure, and then say where it is)."""
    if _state is None or _state.saved_fd2 is None:
        return
    sys.stderr.flush()
    for h in logging.getLogger().handlers:
        h.flush()
    path = _state.log_path
    if _state.upload is not None and path and os.path.exists(path):
        try:
            with open(path, "rb") as f:
                _state.upload(f.read())
        except Exception as e:  # noqa: BLE001 - the log is a convenience, the results are published
            _state.terminal.console.print(f"could not upload the log ({e}); it is at {path}")
    elif path and path.startswith(tempfile.gettempdir()) and os.path.basename(path).startswith("pipeline-"):
        if keep_temp:
            _state.terminal.console.print(f"log: {path}")
        elif _state.upload is None:
            try:
                os.unlink(path)
            except OSError:
                pass


# -- lines from Ray workers -------------------------------------------------------------
def setup_worker() -> None:
    """In a Ray worker (inference actor, read task): our loggers print with a prefix the
    driver recognizes, so their lines reach the terminal as ours while the rest of the
    worker's output goes to the log file. Idempotent."""
    log = logging.getLogger("pipeline")
    if any(getattr(h, "_pipeline_worker", False) for h in log.handlers):
        return
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter(f"{WORKER_PREFIX}%(levelname)s\x1f%(name)s\x1f%(message)s"))
    h._pipeline_worker = True  # type: ignore[attr-defined]
    log.addHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False


def route_worker_output() -> None:
    """After ray.init in the CLI's quiet mode: worker lines that Ray forwards to the driver
    go to the log file instead of the terminal (ours and translations excepted)."""
    if _state is None or _state.verbose or _state.saved_fd2 is None:
        return
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("pipeline_logs", _on_worker_lines)


# Not under "ray": Ray's own logger drops INFO and formats for itself.
_workers = logging.getLogger("workers")


def _on_worker_lines(data: dict[str, Any]) -> None:
    who = data.get("actor_name") or data.get("task_name") or ""
    pid = data.get("pid", "")
    level = logging.WARNING if data.get("is_err") else logging.INFO
    quiet_autoscaler = pid == "autoscaler" and level == logging.INFO
    for line in data.get("lines", []):
        if quiet_autoscaler and not any(w in line for w in ("WARNING", "ERROR")):
            # Its status table, every 5 s for the whole run (~25 lines each): Ray keeps it in
            # the session's monitor log; ours holds what it says at WARNING and above.
            continue
        m = _WORKER_LINE.match(line)
        if m:
            rec = logging.LogRecord(m["name"], logging.getLevelName(m["level"]), "", 0, m["msg"], None, None)
            if isinstance(rec.levelno, int):
                logging.getLogger(m["name"]).handle(rec)
            continue
        _workers.log(level, "(%s pid=%s) %s", who, pid, line, extra={"terminal": False})
        note_worker_line(line)


def note_worker_line(line: str) -> Optional[str]:
    """Remember a worker's last exception line (the root cause of an engine that fails to
    start is printed by its engine-core process, not carried by the exception Ray hands
    back), and translate a line that matters. Returns the translation shown, if any."""
    m = EXC_LINE.search(line)
    if m and _state is not None and "See stack trace" not in line and "See root cause" not in line:
        _state.last_error_line = f"{m['exc'].rsplit('.', 1)[-1]}: {m['msg'].strip()}"
    for t in TRANSLATIONS:
        mt = t.pattern.search(line)
        if mt:
            key = t.message
            if _state is not None and key in _state.said:
                return None
            if _state is not None:
                _state.said.add(key)
            msg = t.message.format(**mt.groupdict())
            logging.getLogger("pipeline.cluster").log(t.level, msg)
            return msg
    return None


def last_worker_error() -> Optional[str]:
    return _state.last_error_line if _state else None


# Ray's wrappers around the exception that matters: never the cause a person should read.
_WRAPPERS = ("RayTaskError", "RayActorError", "ActorDiedError", "UserCodeException", "ActorUnavailableError")


def root_cause(exc: BaseException) -> str:
    """One line saying why a run failed: the innermost exception named in the chain and in
    the tracebacks Ray wraps it with (an actor that failed to start arrives as an
    ActorDiedError whose text holds its constructor's traceback). When that names no cause
    of its own ("See root cause above": the engine-core process printed it), the last
    exception line that a worker printed says it."""
    texts, seen, cur = [], set(), exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        texts.append(f"{type(cur).__name__}: {cur}")
        cur = getattr(cur, "cause", None) or cur.__cause__ or cur.__context__
    found = None
    for text in texts:
        for line in str(text).splitlines():
            m = EXC_LINE.search(line.strip())
            if m and m["exc"].rsplit(".", 1)[-1] not in _WRAPPERS:
                found = f"{m['exc'].rsplit('.', 1)[-1]}: {m['msg'].strip()}"
    if found is None:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        found = f"{type(exc).__name__}: {first}"
    if re.search(r"See (root cause|stack trace)", found):
        found = re.sub(r"\s*See (root cause|stack trace).*$", "", found).rstrip(" .")
        deeper = last_worker_error()
        if deeper:
            found = f"{found}: {deeper}"
    found = " ".join(found.split())
    return found if len(found) <= 600 else found[:597] + "..."
