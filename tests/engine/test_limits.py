"""engine.max_model_len follows the model: its default, and the checks before Ray starts."""

import json
import shutil
import subprocess
import sys

import pytest

from pipeline.config import EngineConfig
from pipeline.engine.limits import read_limits, resolve_max_model_len
from pipeline.errors import UsageError


@pytest.fixture(scope="module")
def model_1024(tiny_model, tmp_path_factory):
    """The tiny model, declared as a 1,024-token model (as a real short-context model would be)."""
    d = tmp_path_factory.mktemp("m") / "tiny-1024"
    shutil.copytree(tiny_model, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["max_position_embeddings"] = 1024
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _kv_bytes_per_token(model_dir, dtype_bytes):
    c = json.loads((model_dir / "config.json").read_text())
    return 2 * c["num_hidden_layers"] * c["num_key_value_heads"] * c["head_dim"] * dtype_bytes


def test_default_is_the_model_limit(model_1024):
    assert resolve_max_model_len(EngineConfig(), model_1024, device="cpu") == 1024
    assert read_limits(model_1024).context_key == "max_position_embeddings"


def test_default_is_capped_by_what_the_kv_cache_holds(model_1024):
    per_token = _kv_bytes_per_token(model_1024, 4)
    gib = 600 * per_token / (1 << 30)  # room for 600 tokens of float32 KV cache
    got = resolve_max_model_len(EngineConfig(kv_cache_gib=gib, dtype="float32"), model_1024, device="cpu")
    assert got == 576  # whole 32-token blocks: 18 of them


def test_explicit_value_above_the_model_limit_names_field_and_limit(model_1024):
    with pytest.raises(UsageError) as e:
        resolve_max_model_len(EngineConfig(max_model_len=2048), model_1024, device="cpu")
    msg = str(e.value)
    assert "engine.max_model_len: 2,048" in msg and "max_position_embeddings = 1,024" in msg and str(model_1024) in msg


def test_explicit_value_above_the_kv_cache_names_kv_cache_gib(model_1024):
    with pytest.raises(UsageError, match=r"engine.kv_cache_gib = 0.001 holds \d+ tokens"):
        resolve_max_model_len(EngineConfig(max_model_len=1024, kv_cache_gib=0.001, dtype="float32"), model_1024, device="cpu")


def test_cli_fails_before_ray_in_one_line(model_1024, tmp_path):
    (tmp_path / "in.jsonl").write_text('{"text": "a film"}\n')
    p = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"),
         "--tasks", "sentiment", "--model", str(model_1024), "--max-model-len", "2048"],
        capture_output=True, text=True, timeout=120,
    )
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: engine.max_model_len: 2,048 is more than this model allows")
    assert not (tmp_path / "out" / "_runs").exists()  # nothing started, nothing recorded
