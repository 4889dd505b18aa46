"""Job specs are validated before anything starts, with errors that name the field."""

import textwrap

import pytest
from pydantic import ValidationError

from pipeline.config import JobSpec

BASE = {"input": {"paths": ["a.jsonl"]}, "output": {"path": "out"}, "tasks": {"sentiment": {}}}


def test_minimal_spec_has_defaults():
    spec = JobSpec.model_validate(BASE)
    # Long texts: each task's own policy unless the engine-wide one is set.
    assert spec.engine.context_policy is None
    from pipeline.tasks import build_tasks

    tasks = build_tasks(JobSpec.model_validate({**BASE, "tasks": {"summarization": {}, "translation": {"target_lang": "fr"}}}).tasks)
    assert [t.context_policy(spec.engine.context_policy) for t in tasks] == ["split", "split"]
    assert [t.context_policy("reject") for t in tasks] == ["reject", "reject"]
    assert spec.resources.actors == 1
    assert list(spec.tasks.enabled()) == ["sentiment"]


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"tasks": {}}, "tasks"),
        ({"tasks": {"translation": {}}}, "tasks.translation.target_lang"),
        ({"tasks": {"sentiment": {"labels": ["only"]}}}, "tasks.sentiment.labels"),
        ({"tasks": {"summarization": {"prompt": {"user": "no placeholder"}}}}, "tasks.summarization.prompt.user"),
        ({"engine": {"max_model_len": 10}}, "engine.max_model_len"),
        ({"engine": {"dtype": "int3"}}, "engine.dtype"),
        ({"engine": {"typo_field": 1}}, "engine.typo_field"),
        ({"input": {"paths": []}}, "input.paths"),
        ({"resources": {"actors": 0}}, "resources.actors"),
        ({"engine": {"cpu_reserved_cores": -1}}, "engine.cpu_reserved_cores"),
    ],
)
def test_invalid_specs_name_the_field(patch, field):
    with pytest.raises(ValidationError) as ei:
        JobSpec.model_validate({**BASE, **patch})
    locs = {".".join(str(p) for p in e["loc"]) for e in ei.value.errors()}
    assert any(loc.startswith(field) for loc in locs), locs


def test_yaml_paths_are_relative_to_the_spec(tmp_path):
    (tmp_path / "jobs").mkdir()
    spec_file = tmp_path / "jobs" / "j.yaml"
    spec_file.write_text(textwrap.dedent("""
        input: {paths: [../data/x.jsonl, "s3://bucket/key.jsonl"]}
        output: {path: ../out}
        tasks: {translation: {target_lang: fr}}
    """))
    spec = JobSpec.from_yaml(spec_file)
    assert spec.input.paths == [str(tmp_path / "data" / "x.jsonl"), "s3://bucket/key.jsonl"]
    assert spec.output.path == str(tmp_path / "out")


def test_overrides_merge_over_yaml(tmp_path):
    f = tmp_path / "j.yaml"
    f.write_text("input: {paths: [a]}\noutput: {path: o}\ntasks: {sentiment: {}}\nengine: {seed: 3}\n")
    spec = JobSpec.from_yaml(f, {"engine": {"max_model_len": 512}})
    assert (spec.engine.seed, spec.engine.max_model_len) == (3, 512)


def test_result_fingerprint_tracks_what_changes_results():
    a = JobSpec.model_validate(BASE)
    same = JobSpec.model_validate({**BASE, "resources": {"actors": 4}})
    prompt = JobSpec.model_validate({**BASE, "tasks": {"sentiment": {"prompt": {"system": "Be terse."}}}})
    sampling = JobSpec.model_validate({**BASE, "tasks": {"sentiment": {"sampling": {"temperature": 0.5}}}})
    fp = a.result_fingerprint("m1")
    assert same.result_fingerprint("m1") == fp  # resources don't change results
    assert a.result_fingerprint("m2") != fp
    assert prompt.result_fingerprint("m1") != fp
    assert sampling.result_fingerprint("m1") != fp


def test_result_fingerprint_covers_the_environment_and_admission_settings():
    a = JobSpec.model_validate(BASE)
    longer = JobSpec.model_validate({**BASE, "engine": {"max_model_len": 4096, "context_policy": "reject"}})
    env = {"vllm": "cpu-0.32.0", "dtype": "float32"}
    fp = a.result_fingerprint("m1", env)
    assert a.result_fingerprint("m1", {**env, "vllm": "cpu-0.33.0"}) != fp
    assert a.result_fingerprint("m1", {**env, "dtype": "bfloat16"}) != fp
    assert longer.result_fingerprint("m1", env) != fp
    # What retry-errors compares: the same but for whether a text fits the context.
    assert longer.result_fingerprint("m1", env, admission=False) == a.result_fingerprint("m1", env, admission=False)
    own = JobSpec.model_validate({**BASE, "tasks": {"sentiment": {"context_policy": "truncate"}}})
    assert own.result_fingerprint("m1", env) != fp
    assert own.result_fingerprint("m1", env, admission=False) == a.result_fingerprint("m1", env, admission=False)


def test_result_environment_names_versions_dtype_and_task_definitions(monkeypatch):
    from pipeline.batch.plan import result_environment
    from pipeline.tasks.sentiment import Sentiment

    spec = JobSpec.model_validate(BASE)
    env = result_environment(spec)
    assert env["vllm"].startswith(("cpu-", "cuda-")) and env["transformers"]
    assert env["dtype"] in ("float32", "bfloat16", "auto")
    assert set(env["tasks"]) == {"sentiment"}
    monkeypatch.setattr(Sentiment, "default_system", "Another instruction: {labels}")
    assert result_environment(spec)["tasks"] != env["tasks"]  # a new default prompt is a new run


def test_read_timeouts_and_retries_are_typed_and_change_no_result():
    a = JobSpec.model_validate(BASE)
    assert (a.input.read_timeout_s, a.input.read_retries, a.input.csv_delimiter) == (60, 5, None)
    tuned = JobSpec.model_validate({**BASE, "input": {**BASE["input"], "read_timeout_s": 5, "read_retries": 0,
                                                      "connect_timeout_s": 1, "retry_backoff_s": 0.1}})
    assert tuned.result_fingerprint("m1") == a.result_fingerprint("m1")  # how bytes arrive changes no result
    tsv = JobSpec.model_validate({**BASE, "input": {**BASE["input"], "csv_delimiter": "\t"}})
    assert tsv.result_fingerprint("m1") != a.result_fingerprint("m1")
    for bad in ({"read_timeout_s": 0}, {"read_retries": -1}, {"csv_delimiter": ",,"}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            JobSpec.model_validate({**BASE, "input": {**BASE["input"], **bad}})
