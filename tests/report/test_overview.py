"""The report's overview from a run summary alone (no run needed): the evaluation the run
summary carries reaches the report in the printed summary's words."""

from pipeline.batch.summary import RunSummary
from pipeline.eval.records import Quality, RunEvaluation
from pipeline.report.data import RunFacts
from pipeline.report.page import overview_rows
from pipeline.report.terminal import print_report


def facts(evaluation):
    s = RunSummary(run_id="r1", status="published", output="/o", rows=60, rows_computed=60, evaluation=evaluation)
    return RunFacts(output="/o", run_id="r1", ledger={}, summary=s, timeline=[], tasks=[], errors=[], log_uri=None)


def test_quality_signals_per_task_in_the_overview():
    ev = RunEvaluation(quality={
        "translation": Quality(outputs=60, truncated=59, truncated_share=59 / 60, empty=0, repetitive=12,
                               repetitive_share=0.2),
        "sentiment": Quality(outputs=60, truncated=0, truncated_share=0.0, empty=1),
    })
    rows = dict(overview_rows(facts(ev)))
    assert rows["quality: translation"] == "of 60 outputs: cut at max_tokens 59 (98.3%), empty 0, repeating itself 12 (20.0%)"
    assert rows["quality: sentiment"].startswith("of 60 outputs: cut at max_tokens 0 (0.0%), empty 1")


def test_an_evaluation_that_failed_says_why_and_none_says_nothing():
    rows = overview_rows(facts(RunEvaluation(error="no such column 'label'")))
    assert ("evaluation", "evaluation failed: no such column 'label'") in rows
    assert not [k for k, _ in overview_rows(facts(None)) if k.startswith(("quality", "metrics", "evaluation"))]


def test_terminal_report_prints_the_overview():
    from rich.console import Console

    ev = RunEvaluation(quality={"summarization": Quality(outputs=3, truncated=1, truncated_share=1 / 3, empty=0)})
    console = Console(record=True, width=200)
    print_report(facts(ev), console)
    assert "quality: summarization  of 3 outputs: cut at max_tokens 1 (33.3%)" in console.export_text()
