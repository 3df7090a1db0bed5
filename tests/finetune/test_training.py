"""The CLI as the workflow runs it: output layout and log, a SIGKILLed run resumed to the same adapters (and refused
to another config), two ranks (ZeRO-2 and ZeRO-3 over gloo) giving the one-rank result, a re-run doing nothing."""
import csv
import json
import logging
import shutil
import signal

import numpy as np
import pytest
from helpers import signal_after, sigkill_after
from safetensors.torch import load_file

from repgeom.finetune import checkpoint_steps, parse_params
from repgeom.finetune.__main__ import main
from repgeom.finetune.plan import learning_rate

pytestmark = pytest.mark.slow

# Tiny LoRA; dropout on, so that resuming must restore the random state.
WITH_DROPOUT = {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "lr": 0.01, "micro_batch": 4, "seed": 3}
# Dropout off: ranks draw different dropout masks, so only this compares across rank counts.
NO_DROPOUT = {**WITH_DROPOUT, "lora_dropout": 0.0, "micro_batch": 2}


def cli_args(model, train, out, params, deepspeed) -> list[str]:
    """float32: these runs are compared across ranks and resumes to 1e-5 (bf16 training runs in the chain test)."""
    return list(map(str, ("--model", model, "--train", train, "--out", out, "--params-json", json.dumps(params),
                          "--deepspeed", deepspeed, "--model-dtype", "float32")))


def finetune(cli, model, train, out, params, deepspeed, extra_args=(), **kwargs):
    """In a subprocess; `main` in this process serves runs that stop before DeepSpeed starts."""
    return cli(*cli_args(model, train, out, params, deepspeed), *extra_args, **kwargs)


def adapters(out):
    return {name: load_file(out / "checkpoints" / name / "adapter_model.safetensors")
            for name in json.loads((out / "checkpoints.json").read_text())}


def read_log(out):
    with open(out / "train_log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_adapters(got, expected, atol=0.0):
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].keys() == expected[name].keys()
        for key in expected[name]:
            np.testing.assert_allclose(got[name][key].numpy(), expected[name][key].numpy(), atol=atol, rtol=0,
                                       err_msg=f"{name}: {key}")


@pytest.fixture(scope="module")
def finetune_file(tmp_path_factory, make_finetune_frame):
    path = tmp_path_factory.mktemp("data") / "finetune_set.parquet"
    make_finetune_frame(37).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_llama_dir, finetune_file, cli, deepspeed_configs):
    """Uninterrupted single-process runs: params name -> output folder."""
    runs = {}
    for name, params in (("with_dropout", WITH_DROPOUT), ("no_dropout", NO_DROPOUT)):
        out = tmp_path_factory.mktemp(name) / "out"
        result = finetune(cli, tiny_llama_dir, finetune_file, out, params, deepspeed_configs["zero2"])
        assert result.returncode == 0, result.stderr
        runs[name] = out
    return runs


def test_layout_and_log(reference):
    out = reference["with_dropout"]
    params = parse_params(WITH_DROPOUT)
    steps = json.loads((out / "checkpoints.json").read_text())
    assert steps == checkpoint_steps(37, params)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == sorted(steps)  # nothing partial left
    for name in steps:
        assert (out / "checkpoints" / name / "adapter_config.json").is_file()
    assert not (out / "train_state").exists()  # only a killed run needs the state
    log = read_log(out)
    assert [int(row["step"]) for row in log] == list(range(1, 13))
    assert [int(row["rows"]) for row in log] == [16, 16, 5] * 4  # a short last batch; no row dropped
    assert [int(row["epoch"]) for row in log] == [1] * 3 + [2] * 3 + [3] * 3 + [4] * 3
    np.testing.assert_allclose([float(row["lr"]) for row in log], [learning_rate(s, 12, params) for s in range(12)])
    assert all(float(row["step_time_s"]) > 0 and int(row["tokens"]) > int(row["rows"]) for row in log)
    assert float(log[-1]["loss"]) < float(log[0]["loss"])


def test_resume_after_sigkill_equals_uninterrupted(reference, tiny_llama_dir, finetune_file, tmp_path, cli,
                                                    deepspeed_configs, capsys):
    out = tmp_path / "out"
    killed = finetune(cli, tiny_llama_dir, finetune_file, out, WITH_DROPOUT, deepspeed_configs["zero2"],
                      env_extra=sigkill_after(8, "steps"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (out / "checkpoints.json").exists()
    assert json.loads((out / "train_state" / "resume.json").read_text())["step"] == 7  # the last save before step 8
    assert len(read_log(out)) == 8

    # The state knows its config: another learning rate may not continue it.
    other = tmp_path / "other"
    shutil.copytree(out, other)
    assert main(cli_args(tiny_llama_dir, finetune_file, other, {**WITH_DROPOUT, "lr": 0.02},
                         deepspeed_configs["zero2"])) == 1
    assert "was written by a different training config (params.lr: 0.01 -> 0.02)" in capsys.readouterr().err
    # The workflow re-runs the job when a hyperparameter changed: then the old run is dropped, not continued.
    restarted = finetune(cli, tiny_llama_dir, finetune_file, other, {**WITH_DROPOUT, "lr": 0.02},
                         deepspeed_configs["zero2"], extra_args=["--restart-if-changed"])
    assert restarted.returncode == 0, restarted.stderr
    assert "holds a run of another training config (params.lr: 0.01 -> 0.02): starting over" in restarted.stderr
    assert "resuming" not in restarted.stderr and len(read_log(other)) == 12
    assert json.loads((other / "train_config.json").read_text())["config"]["params"]["lr"] == 0.02

    resumed = finetune(cli, tiny_llama_dir, finetune_file, out, WITH_DROPOUT, deepspeed_configs["zero2"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after step 7" in resumed.stderr
    assert_same_adapters(adapters(out), adapters(reference["with_dropout"]))
    expected_log = read_log(reference["with_dropout"])
    assert [row["loss"] for row in read_log(out)] == [row["loss"] for row in expected_log]


@pytest.mark.parametrize("name", ["USR1", "TERM"])
def test_a_signal_saves_the_state_and_stops_and_the_same_command_resumes(reference, tiny_llama_dir, finetune_file,
                                                                        tmp_path, cli, deepspeed_configs, name):
    """Slurm's warning (USR1) or its time limit (TERM) as step 10 begins, between the checkpoints at steps 9 and 12:
    the run finishes step 10, saves it, exits 75; the resumed run redoes no step and gives the same adapters."""
    out = tmp_path / "out"
    stopped = finetune(cli, tiny_llama_dir, finetune_file, out, WITH_DROPOUT, deepspeed_configs["zero2"],
                       env_extra=signal_after(9, "steps", name))
    assert stopped.returncode == 75, stopped.stderr
    assert f"stopped by SIG{name} after step 10 of 12" in stopped.stderr and "Traceback" not in stopped.stderr
    assert json.loads((out / "train_state" / "resume.json").read_text())["step"] == 10
    assert not (out / "checkpoints" / "step12").exists() and len(read_log(out)) == 10
    resumed = finetune(cli, tiny_llama_dir, finetune_file, out, WITH_DROPOUT, deepspeed_configs["zero2"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after step 10" in resumed.stderr
    assert_same_adapters(adapters(out), adapters(reference["with_dropout"]))
    assert read_log(out) == [{**row, "step_time_s": got["step_time_s"]}
                             for row, got in zip(read_log(reference["with_dropout"]), read_log(out))]


def test_the_state_is_saved_every_state_every_minutes(reference, tiny_llama_dir, finetune_file, tmp_path, cli,
                                                      deepspeed_configs):
    """With the state saved at every step, a SIGKILL as step 11 begins loses nothing: the resume starts after step
    10, where the checkpoints alone (9, 12) would redo step 10."""
    out = tmp_path / "out"
    killed = finetune(cli, tiny_llama_dir, finetune_file, out, WITH_DROPOUT, deepspeed_configs["zero2"],
                      extra_args=["--state-every-minutes", "1e-6"], env_extra=sigkill_after(10, "steps"))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert json.loads((out / "train_state" / "resume.json").read_text())["step"] == 10
    resumed = finetune(cli, tiny_llama_dir, finetune_file, out, WITH_DROPOUT, deepspeed_configs["zero2"])
    assert resumed.returncode == 0 and "resuming after step 10" in resumed.stderr, resumed.stderr
    assert_same_adapters(adapters(out), adapters(reference["with_dropout"]))


def test_rerun_after_completion_does_nothing(reference, tiny_llama_dir, finetune_file, deepspeed_configs, caplog):
    out = reference["with_dropout"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    caplog.set_level(logging.INFO, logger="repgeom.finetune")
    assert main(cli_args(tiny_llama_dir, finetune_file, out, WITH_DROPOUT, deepspeed_configs["zero2"])) == 0
    assert "is complete (checkpoints.json); nothing to do" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_two_ranks_equal_one_rank(reference, tiny_llama_dir, finetune_file, tmp_path, cli, deepspeed_configs):
    """Same effective batch of 16: 2 per micro-batch x 8 accumulation x 1 rank, against x 4 accumulation x 2 ranks
    (the short last batch of 5 leaves both ranks with empty micro-steps, which still run, at weight 0)."""
    out = tmp_path / "out"
    result = finetune(cli, tiny_llama_dir, finetune_file, out, NO_DROPOUT, deepspeed_configs["zero2"],
                      launcher=deepspeed_configs["torchrun"])
    assert result.returncode == 0, result.stderr
    assert "2 per micro-batch x 4 accumulation x 2 ranks" in result.stderr
    assert_same_adapters(adapters(out), adapters(reference["no_dropout"]), atol=1e-5)
    np.testing.assert_allclose([float(row["loss"]) for row in read_log(out)],
                               [float(row["loss"]) for row in read_log(reference["no_dropout"])], rtol=1e-5)


def test_two_ranks_zero3_killed_and_resumed_equal_one_rank(reference, tiny_llama_dir, finetune_file, tmp_path, cli,
                                                           deepspeed_configs):
    """ZeRO-3 (the 70B configuration) partitions the adapter over the ranks: its saves gather it, and a SIGKILL of
    every rank followed by the same command resumes from each rank's partition of the state."""
    out = tmp_path / "out"
    run = dict(launcher=deepspeed_configs["torchrun"], timeout=400)
    killed = finetune(cli, tiny_llama_dir, finetune_file, out, NO_DROPOUT, deepspeed_configs["zero3"],
                      env_extra=sigkill_after(8, "steps"), **run)
    assert killed.returncode != 0 and not (out / "checkpoints.json").exists()
    resumed = finetune(cli, tiny_llama_dir, finetune_file, out, NO_DROPOUT, deepspeed_configs["zero3"], **run)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after step 7" in resumed.stderr
    assert_same_adapters(adapters(out), adapters(reference["no_dropout"]), atol=1e-5)


@pytest.fixture(scope="module")
def one_row_budget(tiny_llama_dir, finetune_file):
    """max_batch_tokens of the longest row: micro-batches of two rows run as one or two forward passes."""
    from repgeom.finetune.data import encode_finetune_set
    from repgeom.models.loading import load_tokenizer

    return int(encode_finetune_set(finetune_file, load_tokenizer(str(tiny_llama_dir)), None).lengths.max())


@pytest.mark.parametrize("under", [0, 1], ids=["budget-of-the-longest-row", "longest-row-over-the-budget"])
def test_micro_batches_split_by_max_batch_tokens_give_the_same_adapters(reference, tiny_llama_dir, finetune_file,
                                                                         tmp_path, cli, deepspeed_configs,
                                                                         one_row_budget, under):
    """Several backward passes before one ZeRO-2 optimizer step add up to the gradient of one pass; a row longer
    than the budget is a pass of its own. (Two ZeRO-3 ranks, where a rank with fewer passes pads with weight-0 ones,
    also match; that run takes 75 s, so it is not kept.)"""
    out = tmp_path / "out"
    params = {**NO_DROPOUT, "max_batch_tokens": one_row_budget - under}
    result = finetune(cli, tiny_llama_dir, finetune_file, out, params, deepspeed_configs["zero2"])
    assert result.returncode == 0, result.stderr
    assert_same_adapters(adapters(out), adapters(reference["no_dropout"]), atol=1e-5)
    np.testing.assert_allclose([float(row["loss"]) for row in read_log(out)],
                               [float(row["loss"]) for row in read_log(reference["no_dropout"])], rtol=1e-5)


def test_unknown_target_stops_the_run(tiny_llama_dir, finetune_file, tmp_path, cli, deepspeed_configs):
    params = {**NO_DROPOUT, "target_modules": ["q", "query_key_value"]}
    result = finetune(cli, tiny_llama_dir, finetune_file, tmp_path / "out", params, deepspeed_configs["zero2"])
    assert result.returncode == 1, result.stderr
    assert ("repgeom.finetune: error: LoRA target module(s) ['query_key_value'] not found in LlamaForCausalLM; its "
            "Linear layers are named ['down_proj', 'gate_proj'") in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out" / "checkpoints").exists()
