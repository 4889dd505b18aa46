"""Evaluation built in: standard metrics from scikit-learn, rouge-score and sacrebleu,
reference-free quality signals, `pipeline eval` and paired-bootstrap comparisons.

    metrics.py   scorers per task (library metrics) and quality signals
    compare.py   paired bootstrap of two variants over the same rows
    data.py      gold columns through the project's readers; outputs through the manifest
    run.py       the run summary's evaluation section, `pipeline eval`, comparisons
    report.py    plain text tables for the CLI
"""
