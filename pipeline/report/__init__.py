"""What a person reads after a run: `pipeline report OUT` (tables here, an HTML page with
charts) and `pipeline show OUT --task T` (results beside their input text).

    data.py      the facts, from the ledger, the timeline and the published datasets
    charts.py    matplotlib charts as inline SVG
    page.py      the self-contained HTML page
    terminal.py  the same facts as tables (rich)
    show.py      a few results beside their inputs
"""

from __future__ import annotations

import logging
import os
from typing import Optional

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"


def build_report(output: str, run_id: Optional[str] = None, html_path: Optional[str] = None,
                 write_html: bool = True, console=None) -> Optional[str]:
    """Print the run's tables and write its page; returns where the page went."""
    from pipeline.io.store import Store
    from pipeline.report.data import load_run
    from pipeline.report.page import render
    from pipeline.report.terminal import print_report

    facts = load_run(output, run_id)
    if console is None:  # the command's output: stdout, like any listing
        from rich.console import Console

        console = Console()
    print_report(facts, console)
    if not write_html:
        return None
    page = render(facts).encode()
    if html_path:
        os.makedirs(os.path.dirname(os.path.abspath(html_path)), exist_ok=True)
        with open(html_path, "wb") as f:
            f.write(page)
        where = os.path.abspath(html_path)
    else:
        store = Store(output)
        rel = f"{facts.run_dir}/{REPORT_NAME}"
        store.write_bytes(rel, page)
        where = store.uri(rel)
    console.print(f"report: {where}")
    return where
