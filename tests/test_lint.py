"""`snakemake --lint` reports nothing on the workflow, under the default config and the paper configs, and every
Snakemake file is formatted as `snakefmt` (settings in pyproject.toml) writes it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, run_snakemake

pytestmark = pytest.mark.slow  # every test runs `snakemake --lint`

CONFIGS = [None, *sorted((ROOT / "config").glob("paper_*.yaml"))]


@pytest.mark.parametrize("configfile", CONFIGS, ids=lambda c: c.name if c else "default")
def test_lint_reports_nothing(configfile, tmp_path):
    args = ["--configfile", str(configfile)] if configfile else []
    result = run_snakemake("--lint", *args, workdir=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Lints for" not in output, output[-5000:]
    assert "Congratulations, your workflow is in a good condition!" in output


def test_snakefmt_leaves_every_snakemake_file_unchanged():
    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow/rules").glob("*.smk"))]
    result = subprocess.run([str(Path(sys.executable).with_name("snakefmt")), "--check", *map(str, files)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert f"All {len(files)} file(s) would be left unchanged" in result.stderr
