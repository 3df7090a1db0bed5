"""benchmarks/gpu_check.sh --cpu-dry-run: the whole GPU check (the tier, then the throughput benchmarks, then the
summary) on the CPU at tiny sizes, by the same code, so that it cannot fail on a lent GPU for a reason a CPU shows;
and the kit's folder is ignored, so that only the device call's `carry` takes it along."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

CUDA_ONLY = {"test_letter_loss_adds_no_host_sync", "test_weights_load_to_the_gpu_without_a_host_copy",
             "test_device_map_reserve_covers_a_70b_wide_forward_pass"}


def test_the_kit_folder_is_ignored():
    result = subprocess.run(["git", "check-ignore", ".gpu-kit/deepspeed-0.19.8-py3-none-any.whl"], cwd=ROOT,
                            capture_output=True, text=True)
    if result.returncode == 128:
        pytest.skip("not a git checkout")
    assert result.returncode == 0, "the kit must stay out of the working tree that travels (64 MiB)"


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("REPGEOM_GPU_TIER_DEVICE", None)
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-dry-run"], env=env,
                            capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    assert [p["phase"] for p in report["phases"]] == ["env", "tier", "extract", "analysis", "finetune"]
    assert all(p["rc"] == 0 for p in report["phases"])
    outcomes = {t["name"].split("[")[0]: t["outcome"] for t in report["tier"]["tests"]}
    assert {name for name, outcome in outcomes.items() if outcome == "skipped"} == CUDA_ONLY
    assert all(outcome == "passed" for name, outcome in outcomes.items() if name not in CUDA_ONLY)
    recorded = {entry["test"] for entry in report["tier"]["records"]}
    assert {"extraction_bf16_vs_cpu_float32", "extraction_kill_resume", "lora_zero2_kill_resume",
            "knn_gpu_vs_cpu"} <= recorded
    assert set(report["goals"]) and all(goal["value"] is not None for goal in report["goals"].values())
    assert report["finetune"]["params"]["lora_r"] == 64 and len(report["finetune"]["arms"]) == 2
    assert "# GPU check (CPU dry run" in (tmp_path / "gpu_check.md").read_text()
    assert (tmp_path / "gpu_check.log").stat().st_size > 0
    assert len(list(tmp_path.iterdir())) <= 8  # what a device call brings back from $OUT
