"""The workflow parses, validates its config at start, and dry-runs offline on every shipped config."""
import pytest
from helpers import ROOT, run_snakemake

from repgeom.workflow.config import config_errors


def dry_run(*args, cwd=ROOT):
    return run_snakemake("-n", "--cores", "1", *args, workdir=cwd)


@pytest.mark.slow
@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/tiny.yaml", "config/paper_llama3_8b.yaml", "config/paper_llama3_70b.yaml"])
def test_dry_run(configfile, tmp_path):
    result = dry_run("--configfile", str(ROOT / configfile), cwd=tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "extract" in result.stdout and "prompts" in result.stdout and "finetune" in result.stdout


def test_paper_config_runs_the_reference_protocol():
    import yaml
    config = yaml.safe_load((ROOT / "config/paper_llama3_8b.yaml").read_text())
    assert config["dataset"]["id"] == "cais/mmlu"
    assert config["sampling"] == {"max_per_subject": 200, "finetune_max_per_subject": 20, "seed": 42}
    assert config["shots"] == [0, 1, 2, 5]
    assert config["models"]["llama-3-8b"]["hub"] == "meta-llama/Meta-Llama-3-8B"
    assert config["extraction"]["hook"] == "block_input_norm"
    config70 = yaml.safe_load((ROOT / "config/paper_llama3_70b.yaml").read_text())
    assert config70["models"]["llama-3-70b"]["hub"] == "meta-llama/Meta-Llama-3-70B"


@pytest.mark.slow
def test_wrong_key_and_type_stop_the_run_naming_the_key(tmp_path):
    result = dry_run("--config", "bogus_key=1", "results_dir=5", cwd=tmp_path)
    assert result.returncode != 0
    assert "(top level): Additional properties are not allowed ('bogus_key' was unexpected)" in result.stderr + result.stdout
    assert "Nothing to be done" not in result.stdout


def test_config_errors_name_nested_keys():
    import yaml
    config = yaml.safe_load((ROOT / "config/tiny.yaml").read_text())
    assert config_errors(config, ROOT / "config/schema.yaml") == []
    config["models"]["tiny-llama"]["build"]["architecture"]["num_layers"] = "four"
    config["extraction"]["hook"] = "attention"
    config["dataset"]["id"] = "cais/mmlu"
    assert config_errors(config, ROOT / "config/schema.yaml") == [
        "dataset: give exactly one of generate / path / id",
        "extraction.hook: 'attention' is not one of ['block_input_norm', 'post_attention_norm', 'residual']",
        "models.tiny-llama.build.architecture.num_layers: 'four' is not of type 'integer'",
    ]


@pytest.mark.slow
def test_bad_finetune_params_stop_the_run_naming_the_method(tmp_path):
    import yaml
    config = yaml.safe_load((ROOT / "config/tiny.yaml").read_text())
    config["finetune"]["methods"]["lora"]["lr"] = -1
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    result = dry_run("--configfile", str(tmp_path / "bad.yaml"), cwd=tmp_path)
    assert result.returncode != 0
    assert "finetune.methods.lora: fine-tuning param lr=-1: expected a positive number" in result.stderr + result.stdout


@pytest.mark.slow
def test_fine_tuned_conditions_join_the_dag_once_the_data_is_sampled(tmp_path):
    """After `sample` (a checkpoint), every adapter is a condition: extracted with 0-shot prompts and analysed."""
    import yaml
    config = yaml.safe_load((ROOT / "config/tiny.yaml").read_text())
    config["finetune"]["methods"] = {"lora": {"epochs": 2}, "prompt_tuning": {"epochs": 1, "n_checkpoints": 3}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    # A fine-tuning set of 40 rows: 3 steps an epoch at an effective batch of 16.
    data = tmp_path / "results/data"
    data.mkdir(parents=True)
    import pandas as pd
    frame = pd.DataFrame({"question_id": [f"dev/s/{i:05d}" for i in range(40)]})
    for name in ("questions", "analysis_subset", "finetune_set"):
        frame.to_parquet(data / f"{name}.parquet")
    result = dry_run("--configfile", str(tmp_path / "config.yaml"), "-p", "results/tables/accuracy.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = [*(f"ft-lora-step{n}" for n in range(1, 7)),
                "ft-lora-epoch1", "ft-lora-epoch2", "ft-prompt_tuning-step1", "ft-prompt_tuning-step2",
                "ft-prompt_tuning-step3", "ft-prompt_tuning-epoch1"]
    for condition in expected:
        assert f"results/extract/tiny-llama/{condition}.accuracy.parquet" in result.stdout, condition
    assert "--adapter results/finetune/tiny-llama/prompt_tuning/checkpoints/step2" in result.stdout
    assert "results/prompts/tiny-llama/0shot.parquet" in result.stdout


def test_schema_defaults_are_the_analysis_defaults_and_fill_a_bare_params_block():
    """The captions and rules read analysis.params directly: validation must fill in every key, with the values
    AnalysisParams (the CLI's defaults) has."""
    import dataclasses

    import yaml
    from snakemake.utils import validate

    from repgeom.analysis.params import AnalysisParams

    schema = ROOT / "config/schema.yaml"
    properties = yaml.safe_load(schema.read_text())["properties"]["analysis"]["properties"]["params"]["properties"]
    expected = {field.name: field.default for field in dataclasses.fields(AnalysisParams)}
    assert {key: spec.get("default") for key, spec in properties.items()} == expected
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config["analysis"]["params"] = {"Z": 2.0}
    validate(config, str(schema))
    assert config["analysis"]["params"] == {**expected, "Z": 2.0}


@pytest.mark.slow
def test_a_model_folder_without_a_config_is_one_line_of_the_config_check(tmp_path):
    """Checked with the config when the workflow starts, not from inside an input function (no traceback)."""
    import yaml
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    (tmp_path / "empty").mkdir()
    config["models"] = {"mine": {"path": str(tmp_path / "empty"), "max_length": 512}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = dry_run("--configfile", str(tmp_path / "config.yaml"), cwd=tmp_path)
    output = result.stderr + result.stdout
    assert result.returncode != 0
    assert (f"invalid config:\n  models.mine.path: {tmp_path}/empty/config.json does not exist: the model folder "
            f"'{tmp_path}/empty' holds no model (give a save_pretrained folder)\n") in output
    assert "InputFunctionException" not in output and "Traceback" not in output
