"""The serve spec: defaults, validation that names the field, YAML paths, CLI flags."""

import json
import subprocess
import sys
import textwrap

import pytest
from pydantic import ValidationError

from pipeline.config import SERVED_TASKS, ServeConfig


def test_defaults_are_safe_and_serve_every_task():
    c = ServeConfig()
    assert (c.http.host, c.http.port) == ("127.0.0.1", 8000)
    assert list(c.task_routes()) == list(SERVED_TASKS)  # every task that takes text (not chat)
    assert not c.auth.enabled
    assert c.admission.max_queued_requests > 0 and c.admission.max_texts_in_flight > 0  # bounded, never -1
    assert c.limits.max_texts <= c.admission.max_texts_in_flight


def test_route_names_come_from_the_task_classes():
    routes = [cls.route for cls in SERVED_TASKS.values()]
    assert routes == ["sentiment", "summarize", "translate"] and len(set(routes)) == len(routes)


@pytest.mark.parametrize(
    "data, field",
    [
        ({"tasks": {"sentiment": {"labels": ["one"]}}}, "tasks.sentiment.labels"),
        ({"tasks": {"summarization": {"max_words": 1}}}, "tasks.summarization.max_words"),
        ({"tasks": {"nonsense": {}}}, "tasks.nonsense"),
        ({"limits": {"max_texts": 0}}, "limits.max_texts"),
        ({"admission": {"reject_status": 500}}, "admission.reject_status"),
        ({"resources": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}}, "resources.autoscaling"),
        ({"http": {"prot": 1}}, "http.prot"),
    ],
)
def test_invalid_specs_name_the_field(data, field):
    with pytest.raises(ValidationError) as ei:
        ServeConfig.model_validate(data)
    locs = {".".join(str(p) for p in e["loc"]) for e in ei.value.errors()}
    assert any(loc.startswith(field) for loc in locs), locs


def test_limits_that_could_never_be_met_are_refused():
    with pytest.raises(ValidationError, match="never be admitted"):
        ServeConfig.model_validate({"limits": {"max_texts": 64}, "admission": {"max_texts_in_flight": 8}})
    with pytest.raises(ValidationError, match="no room"):
        ServeConfig.model_validate({"limits": {"max_tokens": 600}, "engine": {"max_model_len": 512}})


def test_a_translation_route_needs_no_default_language():
    # target_lang is required by the task, but a request may give it: the spec need not.
    c = ServeConfig.model_validate({"tasks": {"translation": {}}})
    assert list(c.task_routes()) == ["translation"]


def test_yaml_paths_are_relative_to_the_spec(tmp_path):
    (tmp_path / "conf").mkdir()
    spec = tmp_path / "conf" / "serve.yaml"
    spec.write_text(textwrap.dedent("""
        model: {path: ../models/m}
        auth: {api_keys_file: keys.txt}
        tasks: {translation: {target_lang: German}}
    """))
    c = ServeConfig.from_yaml(spec, {"http": {"port": 9001}})
    assert c.model.path == str(tmp_path / "models" / "m") and c.auth.api_keys_file == str(tmp_path / "conf" / "keys.txt")
    assert c.http.port == 9001 and c.task_routes()["translation"].target_lang == "German"


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline", "serve", *args], capture_output=True, text=True, timeout=60)


def test_cli_flags_make_the_same_config():
    p = _cli("--check", "--tasks", "translation,sentiment", "--target-lang", "fr", "--port", "9000", "--max-texts", "4",
             "--api-keys-env", "MY_KEYS", "--min-replicas", "1", "--max-replicas", "3", "--reject-status", "429")
    assert p.returncode == 0, p.stderr
    c = ServeConfig.model_validate(json.loads(p.stdout))
    assert list(c.task_routes()) == ["sentiment", "translation"] and c.task_routes()["translation"].target_lang == "fr"
    assert (c.http.port, c.limits.max_texts, c.auth.api_keys_env, c.admission.reject_status) == (9000, 4, "MY_KEYS", 429)
    assert (c.resources.autoscaling.min_replicas, c.resources.autoscaling.max_replicas) == (1, 3)


def test_cli_refuses_bad_flags_with_status_2():
    p = _cli("--check", "--tasks", "translation", "--labels", "a,b")
    assert p.returncode == 2 and "--labels" in p.stderr
    p = _cli("--check", "--max-texts", "1000")
    assert p.returncode == 2 and "max_texts" in p.stderr
