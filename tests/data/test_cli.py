"""The data stage's entry point: outputs are byte-identical for the same config, and bad input exits
non-zero with a one-line reason and no output file."""
import json

import pandas as pd
import pytest

from repgeom.data import synthetic
from repgeom.data.__main__ import main

PARAMS = {"seed": 1, "n_facts": 30, "n_dev": 5, "n_validation": 6, "n_test": 20, "n_mc_examples": 10}


def run_sample(dataset, out):
    return main(["sample", "--dataset-json", json.dumps({"path": str(dataset)}), "--max-per-subject", "8",
                 "--finetune-max-per-subject", "7", "--seed", "42", "--questions-out", str(out / "q.parquet"),
                 "--subset-out", str(out / "s.parquet"), "--finetune-out", str(out / "f.parquet")])


def run_prompts(out, shots, tokenizer_dir, max_length=1024):
    return main(["prompts", "--questions", str(out / "q.parquet"), "--subset", str(out / "s.parquet"),
                 "--shots", str(shots), "--tokenizer", str(tokenizer_dir), "--max-length", str(max_length),
                 "--out", str(out / f"{shots}shot.parquet")])


def test_sample_and_prompts_are_byte_identical(tmp_path, tiny_llama_dir):
    synthetic.generate(tmp_path / "ds", **PARAMS)
    for run in ("one", "two"):
        (tmp_path / run).mkdir()
        assert run_sample(tmp_path / "ds", tmp_path / run) == 0
        assert run_prompts(tmp_path / run, 2, tiny_llama_dir) == 0
    for name in ("q.parquet", "s.parquet", "f.parquet", "2shot.parquet"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name

    prompts = pd.read_parquet(tmp_path / "one" / "2shot.parquet")
    assert list(prompts.columns) == ["question_id", "subject", "gold", "n_shots", "prompt", "n_tokens", "truncated"]
    assert len(prompts) == 6 * 8 and prompts["question_id"].is_unique
    assert (prompts["n_shots"] == 2).all() and not prompts["truncated"].any()
    assert prompts["prompt"].str.count("\nAnswer: [ABCD]\n\n").eq(2).all()
    assert prompts["prompt"].str.endswith("\nAnswer:").all()
    assert len(pd.read_parquet(tmp_path / "one" / "f.parquet")) == 6 * 7


def test_truncation_is_reported(tmp_path, tiny_llama_dir, caplog):
    caplog.set_level("INFO")
    synthetic.generate(tmp_path / "ds", **PARAMS)
    assert run_sample(tmp_path / "ds", tmp_path) == 0
    assert run_prompts(tmp_path, 5, tiny_llama_dir, max_length=64) == 0
    prompts = pd.read_parquet(tmp_path / "5shot.parquet")
    assert prompts["truncated"].all() and prompts["n_tokens"].max() <= 64
    assert f"5-shot: {len(prompts)} prompts, {len(prompts)} truncated to 64 tokens" in caplog.text


def test_bad_input_exits_without_output(tmp_path, caplog):
    synthetic.generate(tmp_path / "ds", **PARAMS)
    csv = tmp_path / "ds" / "dev" / "geography_dev.csv"
    csv.write_text(csv.read_text().replace(",A\n", ",Z\n", 1).replace(",B\n", ",Z\n", 1).replace(",C\n", ",Z\n", 1).replace(",D\n", ",Z\n", 1))
    assert run_sample(tmp_path / "ds", tmp_path) == 1
    assert "geography_dev.csv line 1: answer 'Z' is outside A-D / 0-3" in caplog.text
    assert not list(tmp_path.glob("*.parquet"))


def test_variant_prompts_carry_variant_and_seed(tmp_path, tiny_llama_dir):
    synthetic.generate(tmp_path / "ds", **PARAMS)
    assert run_sample(tmp_path / "ds", tmp_path) == 0
    common = ["prompts", "--questions", str(tmp_path / "q.parquet"), "--subset", str(tmp_path / "s.parquet"),
              "--shots", "2", "--tokenizer", str(tiny_llama_dir), "--max-length", "1024",
              "--subject-areas", str(tmp_path / "ds" / "subject_areas.json")]
    assert main([*common, "--out", str(tmp_path / "plain.parquet")]) == 0
    assert main([*common, "--variant", "wrong_answers", "--seed", "5", "--out", str(tmp_path / "wrong.parquet")]) == 0
    plain, wrong = pd.read_parquet(tmp_path / "plain.parquet"), pd.read_parquet(tmp_path / "wrong.parquet")
    assert list(wrong.columns) == [*plain.columns, "variant", "variant_seed"]
    assert (wrong["variant"] == "wrong_answers").all() and (wrong["variant_seed"] == 5).all()
    assert (wrong["question_id"] == plain["question_id"]).all() and (wrong["prompt"] != plain["prompt"]).any()
    # Only the shots' letters differ: the query block is the same.
    query_block = lambda prompts: prompts.str.rsplit("\n\n", n=1).str[-1]
    assert (query_block(wrong["prompt"]) == query_block(plain["prompt"])).all()


def test_unknown_variant_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["prompts", "--questions", "q", "--subset", "s", "--shots", "2", "--tokenizer", "t",
              "--max-length", "9", "--variant", "reversed", "--out", str(tmp_path / "x.parquet")])
    assert "invalid choice: 'reversed'" in capsys.readouterr().err


def test_sampled_shots_pool_is_held_out_of_finetuning(tmp_path):
    from repgeom.data.variants import sampled_shots_pool_ids

    synthetic.generate(tmp_path / "ds", **PARAMS)
    args = ["sample", "--dataset-json", json.dumps({"path": str(tmp_path / "ds")}), "--max-per-subject", "8",
            "--finetune-max-per-subject", "20", "--seed", "42", "--questions-out", str(tmp_path / "q.parquet"),
            "--subset-out", str(tmp_path / "s.parquet"), "--finetune-out", str(tmp_path / "f.parquet")]
    assert main([*args, "--hold-out-shot-pool"]) == 0
    pool = sampled_shots_pool_ids(pd.read_parquet(tmp_path / "q.parquet"), 42)
    finetune = pd.read_parquet(tmp_path / "f.parquet")
    assert len(pool) == 6 * min(8, PARAMS["n_validation"]) and not finetune["question_id"].isin(pool).any()
    assert main(args) == 0
    assert pd.read_parquet(tmp_path / "f.parquet")["question_id"].isin(pool).sum() == len(pool)


def test_too_few_dev_examples_names_the_questions_file_and_dataset(tmp_path, tiny_llama_dir, caplog):
    synthetic.generate(tmp_path / "ds", **PARAMS)
    assert run_sample(tmp_path / "ds", tmp_path) == 0
    questions = tmp_path / "q.parquet"
    assert run_prompts(tmp_path, 6, tiny_llama_dir) == 1
    assert (f"has 5 dev examples in questions file {str(questions)!r}, fewer than the 6 shots asked for: "
            "ask for at most 5 shots") in caplog.text
    assert not (tmp_path / "6shot.parquet").exists()
    # With the provenance record the workflow writes next to it, the dataset and the subject's dev CSV are named.
    record = {"schema_version": 1, "artifact": str(questions), "inputs": [],
              "outputs": [{"path": str(questions), "sha256": "0" * 64}],
              "dataset": {"name": "synthetic", "path": str(tmp_path / "ds")}}
    (tmp_path / "q.parquet.prov.json").write_text(json.dumps(record))
    caplog.clear()
    assert run_prompts(tmp_path, 6, tiny_llama_dir) == 1
    subject = pd.read_parquet(questions)["subject"].min()  # the first subject checked
    dev_csv = tmp_path / "ds" / "dev" / f"{subject}_dev.csv"
    assert (f"subject {subject!r} has 5 dev examples in questions file {str(questions)!r} (made from dataset "
            f"{str(tmp_path / 'ds')!r}, dev rows in {str(dev_csv)!r}), fewer than the 6 shots") in caplog.text


def test_tokenizer_folder_that_is_not_a_model(tmp_path, caplog):
    (tmp_path / "not_a_model").mkdir()
    assert main(["prompts", "--questions", str(tmp_path / "q.parquet"), "--subset", str(tmp_path / "s.parquet"),
                 "--shots", "2", "--tokenizer", str(tmp_path / "not_a_model"), "--max-length", "64",
                 "--out", str(tmp_path / "2shot.parquet")]) == 1
    assert (f"--tokenizer: folder {str(tmp_path / 'not_a_model')!r} holds no model or tokenizer (no config.json, "
            "no tokenizer files): it is empty") in caplog.text
