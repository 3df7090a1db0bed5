"""Bad input stops the CLI with one clear line and exit status 1, before any training starts."""
import json
import re

import pytest

from repgeom.finetune.__main__ import main


@pytest.mark.parametrize("case, message", [
    ("empty set", r"fine-tuning set '.*empty.parquet' has no rows: there is nothing to train on"),
    ("missing set", r"fine-tuning set '.*nowhere.parquet' does not exist"),
    ("batch size in the DeepSpeed config", r"DeepSpeed config '.*ds.json' sets train_micro_batch_size_per_gpu = 8, "
                                           r"but the params and 1 rank\(s\) give 2"),
    ("auto left in the DeepSpeed config", r"has 'auto' at zero_optimization.reduce_bucket_size"),
    ("optimizer in the DeepSpeed config", r"has an 'optimizer' section: the optimizer \(AdamW\)"),
    ("micro-batch that does not divide", r"effective_batch 16 is not a multiple of micro_batch 5 x 1 rank\(s\)"),
    ("unknown param", r"unknown fine-tuning param\(s\) rank; known: "),
    ("params not JSON", r"--params-json is not valid JSON"),
    ("no such model", r"model path '.*no_model' does not exist"),
])
def test_bad_input(case, message, tiny_llama_dir, finetune_set, make_finetune_frame, tmp_path, deepspeed_configs,
                   capsys):
    model, train, deepspeed = tiny_llama_dir, finetune_set, tmp_path / "ds.json"
    params, config = {"micro_batch": 2}, {"zero_optimization": {"stage": 2}}
    if case == "empty set":
        train = tmp_path / "empty.parquet"
        make_finetune_frame(3).iloc[:0].to_parquet(train)
    elif case == "missing set":
        train = tmp_path / "nowhere.parquet"
    elif case == "batch size in the DeepSpeed config":
        config["train_micro_batch_size_per_gpu"] = 8
    elif case == "auto left in the DeepSpeed config":
        config["zero_optimization"]["reduce_bucket_size"] = "auto"
        config["train_batch_size"] = "auto"  # the batch sizes may say auto: they are filled in
    elif case == "optimizer in the DeepSpeed config":
        config["optimizer"] = {"type": "AdamW"}
    elif case == "micro-batch that does not divide":
        params["micro_batch"] = 5
    elif case == "unknown param":
        params["rank"] = 8
    elif case == "no such model":
        model = tmp_path / "no_model"
    deepspeed.write_text(json.dumps(config))
    params_json = "{lr: 1}" if case == "params not JSON" else json.dumps(params)
    status = main(["--model", str(model), "--train", str(train), "--out", str(tmp_path / "out"),
                   "--params-json", params_json, "--deepspeed", str(deepspeed)])
    err = capsys.readouterr().err
    assert status == 1
    lines = [line for line in err.splitlines() if "repgeom.finetune: error:" in line]
    assert len(lines) == 1 and re.search(message, lines[0]), err
    assert not (tmp_path / "out").exists()


def test_deepspeed_configs_in_the_repository_are_filled_at_launch(deepspeed_configs):
    import torch

    from repgeom.finetune import parse_params
    from repgeom.finetune.trainer import deepspeed_config

    params = parse_params({"micro_batch": 2})
    for stage, world in (("zero2", 1), ("zero3", 8)):
        config = deepspeed_config(deepspeed_configs[stage], params, world, torch.bfloat16)
        assert config["zero_optimization"]["stage"] == int(stage[-1])
        assert (config["train_batch_size"], config["train_micro_batch_size_per_gpu"],
                config["gradient_accumulation_steps"]) == (16, 2, 8 // world)
        assert config["bf16"]["enabled"] and config["gradient_clipping"] == 0.0
        assert "auto" not in json.dumps(config)
    assert not deepspeed_config(deepspeed_configs["zero2"], params, 1, torch.float32)["bf16"]["enabled"]


def _not_a_model(tmp_path, case):
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    if case == "random files":
        for name in ("notes.txt", "data.csv", "run.log"):
            (folder / name).write_text("not a model\n")
    elif case == "config only":
        (folder / "config.json").write_text('{"model_type": "llama"}')
    return folder


NOT_A_MODEL = {
    "random files": r"holds no model or tokenizer \(no config.json, no tokenizer files\): it holds 3 entries: "
                    r"data.csv, notes.txt, run.log",
    "empty": r"holds no model or tokenizer \(no config.json, no tokenizer files\): it is empty",
    "config only": r"holds no tokenizer \(none of tokenizer.json, .*\): it holds 1 entry: config.json",
}


@pytest.mark.parametrize("case", sorted(NOT_A_MODEL))
def test_model_folder_that_is_not_a_model(case, finetune_set, tmp_path, capsys):
    """One line naming the folder and what it holds, instead of transformers' tokenizer backend error."""
    folder = _not_a_model(tmp_path, case)
    deepspeed = tmp_path / "ds.json"
    deepspeed.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    status = main(["--model", str(folder), "--train", str(finetune_set), "--out", str(tmp_path / "out"),
                   "--params-json", '{"micro_batch": 2}', "--deepspeed", str(deepspeed)])
    err = capsys.readouterr().err
    assert status == 1
    lines = [line for line in err.splitlines() if "repgeom.finetune: error:" in line]
    assert len(lines) == 1 and f"folder {str(folder)!r} " + "holds no" in lines[0], err
    assert re.search(NOT_A_MODEL[case], lines[0]), err
    assert "sentencepiece" not in err and not (tmp_path / "out").exists()


def test_model_folder_that_is_not_a_model_in_a_subprocess(cli, finetune_set, tmp_path):
    """`python -m repgeom.finetune` itself: exit status 1, one error line, no traceback."""
    folder = _not_a_model(tmp_path, "random files")
    deepspeed = tmp_path / "ds.json"
    deepspeed.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    done = cli("--model", folder, "--train", finetune_set, "--out", tmp_path / "out", "--params-json",
               '{"micro_batch": 2}', "--deepspeed", deepspeed)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "sentencepiece" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if "repgeom.finetune: error:" in line]
    assert len(lines) == 1 and re.search(NOT_A_MODEL["random files"], lines[0]), done.stderr
