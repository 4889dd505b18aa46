"""Grading a job's outputs: the run summary's quality section, `pipeline eval`, comparisons.

    evaluation_summary(spec)        end of every `pipeline run`: quality signals of all
                                    outputs; metrics when the spec names gold columns
    evaluate(spec, workdir, rows)   `pipeline eval`: the first N referenced rows through the
                                    normal batch path, then metrics against the gold column
    compare(a, b)                   two evaluated variants over their common rows: differences
                                    with a paired bootstrap interval

An eval run is an ordinary run (`pipeline.batch.runner.run`) over a sample file written
from the input by the project's readers: one JSONL line per referenced row, keeping the
row id the input gives it, its text and its gold values. So what is graded is exactly
what `pipeline run` would produce, and the same gold columns grade any later run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from pipeline.config import JobSpec
from pipeline.eval import metrics as M
from pipeline.eval.compare import RESAMPLES, SEED, paired_bootstrap
from pipeline.eval.data import count_outputs, outputs_by_row, read_columns, read_outputs
from pipeline.eval.records import Confusion, Quality, RunEvaluation, TaskMetrics

logger = logging.getLogger(__name__)

_GOLD = "gold_"  # sample-file column of a task's gold value: gold_sentiment, ...
GRADED_TASKS = ("sentiment", "summarization", "translation")  # tasks with reference metrics


# -- one task's outputs against its gold column --------------------------------------------
@dataclass
class TaskEval:
    """A task's outputs joined to its gold values, row by row (input order)."""

    task: str
    reference_field: str
    row_ids: list[str]
    references: list[str]
    predictions: list[Optional[str]]  # None: the row failed (an error record)
    finish_reasons: list[Optional[str]]
    label_map: dict[str, str] = field(default_factory=dict)
    leads: Optional[list[str]] = None  # summarization: each text's first sentence

    def scorer(self, ids: Optional[list[str]] = None) -> M.Combined:
        """Reference metrics and quality signals over `ids` (default all), in that order."""
        pos = {r: i for i, r in enumerate(self.row_ids)}
        sel = [pos[r] for r in ids] if ids is not None else list(range(len(self.row_ids)))
        refs = [self.references[i] for i in sel]
        preds = [self.predictions[i] for i in sel]
        fins = [self.finish_reasons[i] for i in sel]
        quality = M.QualityScorer.score(preds, fins, repetition=self.task != "sentiment")
        if self.task == "sentiment":
            gold = [M.normalize_label(r, self.label_map) for r in refs]
            ref_scorer: Any = M.SentimentScorer(gold, [M.normalize_label(p) for p in preds])
        elif self.task == "summarization":
            ref_scorer = M.RougeScorer.score([p or "" for p in preds], refs)
        elif self.task == "translation":
            ref_scorer = M.TranslationScorer.score([p or "" for p in preds], refs)
        else:
            raise ValueError(f"no reference metrics for task {self.task!r} (graded: {', '.join(GRADED_TASKS)})")
        return M.Combined([ref_scorer, quality])

    def result(self) -> TaskMetrics:
        sc = self.scorer()
        ref_scorer, quality = sc.parts
        figures = sc.aggregate(np.arange(sc.n))
        out = TaskMetrics(
            reference_field=self.reference_field,
            rows=len(self.row_ids),
            failed=sum(p is None for p in self.predictions),
            metrics={k: _num(v) for k, v in figures.items() if k not in M.LOWER_IS_BETTER},
            quality=Quality(**M.quality_summary(quality.totals())),
        )
        if self.task == "sentiment":
            out.confusion = Confusion(**ref_scorer.confusion())
            out.predicted = ref_scorer.predicted_distribution()
            values, counts = np.unique(ref_scorer.gold.astype(str), return_counts=True)
            out.gold = {str(v): int(c) for v, c in zip(values, counts)}
        if self.task == "summarization" and self.leads is not None:
            lead = M.RougeScorer.score(self.leads, self.references).aggregate(np.arange(len(self.leads)))
            out.lead_baseline = {k: _num(v) for k, v in lead.items()}
            if lead["rougeL"] > 0:
                out.rougeL_vs_lead = _num(figures["rougeL"] / lead["rougeL"])
        return out


def _num(v: float) -> Optional[float]:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4)


def evaluate_output(spec: JobSpec) -> dict[str, TaskEval]:
    """Join the published outputs of `spec` to the gold columns its `evaluation` names."""
    ev = spec.evaluation
    if ev is None:
        return {}
    columns = {_GOLD + t: f for t, f in ev.references.items()}
    want_lead = "summarization" in ev.references
    if want_lead:
        columns["text"] = spec.input.text_field
    gold: dict[str, dict[str, str]] = {t: {} for t in ev.references}
    leads: dict[str, str] = {}
    for row in read_columns(spec.input, columns):
        rid = row["row_id"]
        for t in ev.references:
            v = row[_GOLD + t]
            if v is not None and rid not in gold[t]:
                gold[t][rid] = v
        if want_lead and rid in gold["summarization"] and rid not in leads:
            leads[rid] = M.lead_sentence(row["text"] or "")
    out: dict[str, TaskEval] = {}
    for t, refs in gold.items():
        cols = ("label", "finish_reason") if t == "sentiment" else ("output_text", "finish_reason")
        outs = outputs_by_row(spec.output.path, t, cols)
        ids = list(refs)
        got = [outs.get(r, (None, None)) for r in ids]
        out[t] = TaskEval(
            task=t, reference_field=ev.references[t], row_ids=ids, references=[refs[r] for r in ids],
            predictions=[g[0] for g in got], finish_reasons=[g[1] for g in got], label_map=dict(ev.label_map),
            leads=[leads.get(r, "") for r in ids] if t == "summarization" else None,
        )
        if not ids:
            logger.warning("evaluation: no row of the input has a value in '%s' (task %s)", ev.references[t], t)
    return out


# -- the run summary -------------------------------------------------------------------------
# Repetition costs about 30 us per output in Python: on larger runs, an even sample of this
# many outputs per task is checked (about 3 s) instead of all of them.
REPETITION_SAMPLE = 100_000


def run_quality(spec: JobSpec) -> dict[str, Quality]:
    """Quality signals over every published output of each task, read file by file."""
    result: dict[str, Quality] = {}
    for task in spec.tasks.enabled():
        repetition = task != "sentiment"
        stride = max(1, -(-count_outputs(spec.output.path, task) // REPETITION_SAMPLE)) if repetition else 1
        totals: dict[str, float] = {"outputs": 0, "truncated": 0, "empty": 0}
        if repetition:
            totals.update(repetition_checked=0, repetitive=0, seq_rep_sum=0.0)
        seen = 0
        for t in read_outputs(spec.output.path, task, ("output_text", "finish_reason")):
            texts, fins = t["output_text"].to_pylist(), t["finish_reason"].to_pylist()
            parts = [M.QualityScorer.score(texts, fins, repetition=False).totals()]
            if repetition:
                pick = [i for i in range(len(texts)) if (seen + i) % stride == 0]
                sub = M.QualityScorer.score([texts[i] for i in pick], [fins[i] for i in pick]).totals()
                parts.append({k: sub[k] for k in ("repetition_checked", "repetitive", "seq_rep_sum")})
            seen += len(texts)
            for part in parts:
                for k, v in part.items():
                    totals[k] += v
        result[task] = Quality(**M.quality_summary(totals))
    return result


def evaluation_summary(spec: JobSpec) -> RunEvaluation:
    """The `evaluation` section of a run summary: quality signals of every task and, when
    the spec names gold columns, metrics against them. Never fails the run it describes."""
    t0 = time.perf_counter()
    out = RunEvaluation()
    try:
        out.quality = run_quality(spec)
        if spec.evaluation is not None:
            out.metrics = {t: e.result() for t, e in evaluate_output(spec).items()}
    except Exception as e:  # a run that published must not fail on its report
        logger.warning("evaluation of the outputs failed: %s: %s", type(e).__name__, e)
        out.error = f"{type(e).__name__}: {e}"[:500]
    out.seconds = round(time.perf_counter() - t0, 3)
    return out


# -- pipeline eval ----------------------------------------------------------------------------
@dataclass
class Sample:
    path: Path
    rows: int  # rows written (text and at least one gold value)
    without_text: int  # referenced rows left out: the readers refused their text
    without_reference: int  # rows with text but no gold value


def write_sample(spec: JobSpec, path: Path, rows: Optional[int]) -> Sample:
    """The first `rows` rows that have text and a gold value, as JSONL {id, text, gold_<task>}."""
    assert spec.evaluation is not None
    refs = spec.evaluation.references
    columns = {"text": spec.input.text_field, **{_GOLD + t: f for t, f in refs.items()}}
    written = no_text = no_ref = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in read_columns(spec.input, columns):
            has_ref = any(row[_GOLD + t] is not None for t in refs)
            if not has_ref:
                no_ref += row["text"] is not None
                continue
            if row["text"] is None:
                no_text += 1
                continue
            rec = {"id": row["row_id"], "text": row["text"], **{_GOLD + t: row[_GOLD + t] for t in refs}}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            written += 1
            if rows is not None and written >= rows:
                break
    # An unchanged sample keeps its file (and so its fingerprint): evaluating the same
    # variant again into the same --output finds its run published and computes nothing.
    if path.exists() and path.read_bytes() == tmp.read_bytes():
        tmp.unlink()
    else:
        tmp.replace(path)
    return Sample(path, written, no_text, no_ref)


def eval_spec(spec: JobSpec, sample: Path, output: Path) -> JobSpec:
    """The spec that runs the graded tasks (only those) over the sample into `output`."""
    assert spec.evaluation is not None
    data = spec.model_dump(mode="json")
    data["input"] = {"paths": [str(sample)], "format": "jsonl", "text_field": "text", "id_field": "id"}
    data["output"] = {"path": str(output), "rows_per_unit": spec.output.rows_per_unit}
    data["tasks"] = {t: c for t, c in data["tasks"].items() if t in spec.evaluation.references}
    data["evaluation"] = {"references": {t: _GOLD + t for t in spec.evaluation.references},
                          "label_map": dict(spec.evaluation.label_map)}
    data["incremental"] = False
    return JobSpec.model_validate(data)


@dataclass
class VariantResult:
    name: str
    source: str  # the spec file, or "flags"
    spec: JobSpec  # the eval run's spec
    sample: Sample
    run: Any  # the RunSummary of the eval run
    tasks: dict[str, TaskEval]

    def as_dict(self) -> dict[str, Any]:
        keep = ("run_id", "status", "rows", "wall_seconds", "rows_per_second_after_startup",
                "output_tokens_per_second_after_startup", "prompt_tokens", "output_tokens")
        run = self.run.to_json()
        return {
            "spec": self.source,
            "model": run.get("model") or self.spec.model.path,
            "output": self.spec.output.path,
            "sample": {"rows": self.sample.rows, "without_text": self.sample.without_text,
                       "without_reference": self.sample.without_reference},
            "run": {k: run[k] for k in keep if k in run},
            "tasks": {t: e.result().model_dump(mode="json", exclude_none=True) for t, e in self.tasks.items()},
        }


def evaluate(spec: JobSpec, workdir: Path, rows: Optional[int] = None, name: str = "a", source: str = "flags",
             force: bool = False) -> VariantResult:
    """`pipeline eval` for one variant: sample, run through the batch path, grade."""
    from pipeline.batch.runner import run

    from pipeline.errors import UsageError

    if spec.evaluation is None:
        raise UsageError("nothing to grade against: name a gold column (--reference-field, or evaluation.references)")
    ungraded = sorted(set(spec.evaluation.references) - set(GRADED_TASKS))
    if ungraded:
        raise UsageError(f"no reference metrics for {', '.join(ungraded)} (graded tasks: {', '.join(GRADED_TASKS)})")
    sample = write_sample(spec, workdir / name / "sample.jsonl", rows)
    if sample.rows == 0:
        raise UsageError(f"no input row has both text and a value in {sorted(spec.evaluation.references.values())}")
    es = eval_spec(spec, sample.path, workdir / name / "out")
    logger.info("eval %s: %d rows, tasks %s, output %s", name, sample.rows, ", ".join(es.tasks.enabled()), es.output.path)
    summary = run(es, force=force)
    tasks = evaluate_output(es)
    for t, e in tasks.items():  # name the user's column, not the sample file's
        e.reference_field = spec.evaluation.references[t]
    return VariantResult(name, source, es, sample, summary, tasks)


def compare(a: VariantResult, b: VariantResult, resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, Any]:
    """Per task both graded: every metric of B - A over their common rows, with a paired
    bootstrap 95% interval and whether it excludes zero."""
    out: dict[str, Any] = {"a": a.source, "b": b.source, "resamples": resamples, "seed": seed, "tasks": {}}
    for task in a.tasks:
        if task not in b.tasks:
            continue
        ta, tb = a.tasks[task], b.tasks[task]
        in_b = set(tb.row_ids)
        common = [r for r in ta.row_ids if r in in_b]
        if not common:
            out["tasks"][task] = {"rows": 0, "metrics": {}}
            continue
        diffs = paired_bootstrap(ta.scorer(common), tb.scorer(common), resamples=resamples, seed=seed)
        out["tasks"][task] = {"rows": len(common), "metrics": {d.metric: d.as_dict() for d in diffs}}
    return out
