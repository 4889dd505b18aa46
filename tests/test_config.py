"""Job specs are validated before anything starts, with errors that name the field."""

import textwrap

import pytest
from pydantic import ValidationError

from pipeline.config import JobSpec

BASE = {"input": {"paths": ["a.jsonl"]}, "output": {"path": "out"}, "tasks": {"sentiment": {}}}


def test_minimal_spec_has_defaults():
    spec = JobSpec.model_validate(BASE)
    assert spec.engine.context_policy == "truncate"
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
