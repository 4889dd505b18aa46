"""Model FLOPs from a model folder, and the measured-peak cache the run summary reads."""

import json

import pytest

from pipeline.engine.flops import ModelFlops, _matmul_params_from_config, known_peak, measure_peak, utilization


def test_weights_and_config_give_the_same_matrix_parameters(tiny_model):
    """The count from the checkpoint's tensor shapes (what is used) agrees with the Llama
    formula from config.json (the fallback): embeddings and norms are left out of both."""
    m = ModelFlops.from_model(tiny_model)
    cfg = json.loads((tiny_model / "config.json").read_text())
    heads, hidden = cfg["num_attention_heads"], cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or hidden // heads
    assert m.matmul_params == _matmul_params_from_config(cfg, hidden, cfg["num_hidden_layers"], heads, head_dim)
    assert m.head_params == hidden * cfg["vocab_size"]
    assert m.n_layer == cfg["num_hidden_layers"] and m.d_attn == heads * head_dim


def test_run_flops_count_prompt_and_output_tokens_differently():
    m = ModelFlops(matmul_params=1000, head_params=100, n_layer=2, d_attn=10)
    # one request, 4 prompt tokens (attending to 2 positions on average), 2 generated (to 4 + 1)
    expected = 2 * 1000 * 6 + 2 * 2 * 10 * (4 * 2 + 2 * 5) + 2 * 100 * 2
    assert m.run_flops(4, 2, 1) == expected
    assert m.run_flops(0, 0, 0) == 0.0
    # prompt tokens the prefix cache served were not computed: not counted
    assert m.run_flops(4, 2, 1, cached_prompt_tokens=4) == 2 * 1000 * 2 + 2 * 2 * 10 * (2 * 5) + 2 * 100 * 2


def test_measured_peak_is_cached_and_gives_the_utilization(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path))
    assert known_peak("float32", 1) is None
    m = ModelFlops(matmul_params=10**8, head_params=10**7, n_layer=10, d_attn=512)
    u = utilization(m, 1000, 100, 10, 1.0, [("float32", 1)])
    assert u.mfu is None and "python -m bench --peak" in u.note
    g = measure_peak("float32", [0], seconds=0.3)
    assert g > 0 and known_peak("float32", 1) == pytest.approx(g, abs=0.1)
    assert "float32 | 1 threads" in next(iter(json.loads((tmp_path / "peaks.json").read_text())))
    u = utilization(m, 1000, 100, 10, 1.0, [("float32", 1)])
    assert u.mfu == pytest.approx(m.run_flops(1000, 100, 10) / 1e9 / known_peak("float32", 1))


def test_a_disturbed_peak_measurement_does_not_lower_the_cached_peak(tmp_path, monkeypatch):
    """A peak is a maximum: a measurement taken while another process shared the cores (it
    once read half the true two-thread bf16 peak) must not replace a better one."""
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path))
    g = measure_peak("float32", [0], seconds=0.3)
    key = next(iter(json.loads((tmp_path / "peaks.json").read_text())))
    data = json.loads((tmp_path / "peaks.json").read_text())
    data[key]["gflops"] = 10 * g  # a better figure measured earlier
    (tmp_path / "peaks.json").write_text(json.dumps(data))
    assert measure_peak("float32", [0], seconds=0.3) == pytest.approx(10 * g, abs=0.1)
    assert known_peak("float32", 1) == pytest.approx(10 * g, abs=0.1)
