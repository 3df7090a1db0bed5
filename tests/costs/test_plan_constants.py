"""benchmarks/plan_constants.py: hand-made benchmark results in, the constants' entries rewritten to the FLOP/s that
repgeom.costs.flops counts, and nothing else of the file changed."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import pytest
import yaml
from helpers import ROOT

from repgeom.costs.architecture import Architecture
from repgeom.costs.flops import extraction_flops, knn_flops, training_flops

SHIPPED = ROOT / "src" / "repgeom" / "resources" / "costs" / "throughput.yaml"
SMOLLM2 = {"vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
           "num_attention_heads": 9, "num_key_value_heads": 3, "tie_word_embeddings": True}


def load_script():
    spec = importlib.util.spec_from_file_location("plan_constants", ROOT / "benchmarks" / "plan_constants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


plan_constants = load_script()


def rounded(value: float) -> float:
    """As the constants are written: three significant digits."""
    return float(f"{value:.2e}")


def extract_result(device="CPU (x86_64, 1 threads)", threads=1, dtype="bfloat16") -> dict:
    return {"device": device, "threads": threads, "commit": "abc1234", "dtype": dtype, "config": SMOLLM2,
            "command": "benchmarks/extract_throughput.py --shape smollm2 --dtype bfloat16",
            "prompt_lengths": [100, 200, 300], "production": {"path": "extractor", "tokens": 600, "seconds": 4.0}}


def finetune_result() -> dict:
    return {"device": "CPU (x86_64, 2 threads)", "threads": 2, "commit": "abc1234", "dtype": "float32",
            "config": {**SMOLLM2, "num_hidden_layers": 2}, "padded_lengths": [50, 50, 80, 80],
            "command": "benchmarks/finetune_throughput.py --shape smollm2 --layers 2 --arms stage",
            "production": {"path": "repgeom.finetune (DeepSpeed ZeRO-2 + peft)", "tokens": 230, "seconds": 10.0}}


def analysis_result() -> dict:
    return {"n": 1000, "d": 64, "threads": 2, "commit": "abc1234", "command": "benchmarks/analysis_speed.py",
            "machine": {"cpu": "x86_64", "gpu": None, "gpu_device": None},
            "runs": {"a_dadapy_reference": {"stages_s": {"knn": 9.0}}, "b_project_cpu": {"stages_s": {"knn": 0.5}}}}


@pytest.fixture
def constants(tmp_path):
    path = tmp_path / "throughput.yaml"
    shutil.copy(SHIPPED, path)
    return path


def run(tmp_path, constants, *extra, **results) -> int:
    """plan_constants on these results (name: dict), the others absent."""
    args = ["--constants", str(constants)]
    for name in ("extract", "finetune", "analysis", "gpu_check"):
        path = tmp_path / f"{name}.json"
        if name in results:
            path.write_text(json.dumps(results[name]))
        args += [f"--{name.replace('_', '-')}", str(path)]
    return plan_constants.main(args + list(extra))


def changed_lines(before: str, after: str) -> list[int]:
    old, new = before.splitlines(), after.splitlines()
    assert len(old) == len(new)
    return [i for i, (a, b) in enumerate(zip(old, new)) if a != b]


def test_cpu_results_become_the_flops_of_repgeom_costs(tmp_path, constants):
    before = constants.read_text()
    assert run(tmp_path, constants, extract=extract_result(), finetune=finetune_result(),
               analysis=analysis_result()) == 0
    after = constants.read_text()
    cpu = yaml.safe_load(after)["devices"]["cpu"]
    # The run used 1 thread; the constants' rate is for their 2 cores.
    forward = extraction_flops(Architecture.from_hf_config(SMOLLM2), [100, 200, 300]) / 4.0 * 2
    assert cpu["forward_flops_per_s"]["bfloat16"]["value"] == rounded(forward)
    assert cpu["forward_flops_per_s"]["bfloat16"]["source"] == (
        "measured: benchmarks/extract_throughput.py --shape smollm2 --dtype bfloat16 at abc1234 on "
        "CPU (x86_64, 1 threads), 150 tokens/s, scaled from 1 threads to 2 cores")
    train = training_flops(Architecture.from_hf_config({**SMOLLM2, "num_hidden_layers": 2}), [50, 50, 80, 80]) / 10.0
    assert cpu["train_flops_per_s"]["float32"]["value"] == rounded(train)
    assert "23 tokens/s" in cpu["train_flops_per_s"]["float32"]["source"]
    assert cpu["knn_flops_per_s"]["value"] == rounded(knn_flops(1000, 64) / 0.5)
    # Three lines changed; comments and every other entry as they were.
    assert len(changed_lines(before, after)) == 3
    assert yaml.safe_load(before)["devices"]["cpu"]["train_flops_per_s"]["bfloat16"] == \
        cpu["train_flops_per_s"]["bfloat16"]
    assert [line for line in after.splitlines() if line.lstrip().startswith("#")] == \
        [line for line in before.splitlines() if line.lstrip().startswith("#")]


def test_one_result_per_dtype(tmp_path, constants):
    float32 = tmp_path / "extract_float32.json"
    float32.write_text(json.dumps(extract_result(dtype="float32")))
    bfloat16 = tmp_path / "extract_bfloat16.json"
    bfloat16.write_text(json.dumps(extract_result()))
    absent = str(tmp_path / "absent.json")
    assert plan_constants.main(["--constants", str(constants), "--extract", str(bfloat16), str(float32),
                                "--finetune", absent, "--analysis", absent, "--gpu-check", absent]) == 0
    forward = yaml.safe_load(constants.read_text())["devices"]["cpu"]["forward_flops_per_s"]
    assert forward["float32"]["value"] == forward["bfloat16"]["value"]
    assert forward["float32"]["source"].startswith("measured:")


def test_dry_run_writes_nothing(tmp_path, constants, capsys):
    before = constants.read_text()
    assert run(tmp_path, constants, "--dry-run", extract=extract_result()) == 0
    assert constants.read_text() == before
    assert "devices.cpu.forward_flops_per_s.bfloat16:" in capsys.readouterr().out


@pytest.mark.parametrize("device, memory_gib, kind", [
    ("NVIDIA H100 80GB HBM3", None, "h100-80gb"), ("NVIDIA H200", None, "h200-141gb"),
    ("NVIDIA A100-SXM4-40GB", None, "a100-40gb"), ("NVIDIA A100 80GB PCIe", None, "a100-80gb"),
    ("NVIDIA A100-SXM4", 79.2, "a100-80gb"), ("CPU (x86_64, 2 threads)", None, "cpu")])
def test_device_kinds(device, memory_gib, kind):
    assert plan_constants.device_kind(device, memory_gib) == kind


def test_gpu_check_writes_the_gpus_entries_unscaled(tmp_path, constants):
    before = constants.read_text()
    report = {"dry_run": False, "environment": {"device": {"name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.2}},
              "extract": extract_result(device="NVIDIA H100 80GB HBM3", threads=16), "finetune": None,
              "analysis": None}
    assert run(tmp_path, constants, gpu_check=report) == 0
    after = constants.read_text()
    entry = yaml.safe_load(after)["devices"]["h100-80gb"]["forward_flops_per_s"]["bfloat16"]
    assert entry["value"] == rounded(extraction_flops(Architecture.from_hf_config(SMOLLM2), [100, 200, 300]) / 4.0)
    assert entry["source"].startswith("measured: benchmarks/gpu_check.sh (benchmarks/extract_throughput.py")
    assert len(changed_lines(before, after)) == 1


def test_the_gpu_checks_cpu_dry_run_is_no_measurement(tmp_path, constants):
    before = constants.read_text()
    report = {"dry_run": True, "extract": extract_result()}
    assert run(tmp_path, constants, gpu_check=report) == 1  # nothing to write
    assert constants.read_text() == before


def test_a_result_of_an_older_benchmark_is_one_line(tmp_path, constants, capsys):
    old = {key: value for key, value in extract_result().items() if key != "prompt_lengths"}
    assert run(tmp_path, constants, extract=old) == 1
    assert "has no 'prompt_lengths': run the benchmark again" in capsys.readouterr().err


def test_an_entry_the_constants_lack_is_named(tmp_path, constants, capsys):
    gpu_float32 = extract_result(device="NVIDIA H200", dtype="float32")
    assert run(tmp_path, constants, extract=gpu_float32) == 1
    assert "no entry devices.h200-141gb.forward_flops_per_s.float32" in capsys.readouterr().err
