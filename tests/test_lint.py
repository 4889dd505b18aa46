"""Static checks that catch what a merge or a refactor breaks before any test reaches it:
undefined names, unused imports and variables, redefinitions (ruff's pyflakes rules, F)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.fail("ruff is not installed: `pip install -e '.[test]'` installs it")
    return [exe]


def test_pyflakes_rules_pass():
    cmd = _ruff() + ["check", "--no-cache", "--select", "F", "--output-format", "concise",
                     "pipeline", "bench", "tests", "jobs"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
