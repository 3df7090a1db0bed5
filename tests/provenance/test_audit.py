"""`repgeom audit` on a small chain made with the job wrapper itself: dataset folder -> prompts file and adapter
folder -> zarr group + accuracy table -> metrics -> final table and figure. A clean run audits clean; a byte of a
zarr chunk, a replaced adapter, a deleted prompts file, an edited config and mixed code versions are each named."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from repgeom.provenance import config_subset, hash_path, read_record, zarr_group_hash
from repgeom.provenance.cli import main

CONFIG = {"dataset": {"generate": {"n": 2}}, "shots": [0], "finetune": {"r": 4}, "analysis": {"params": {"k": 16}}}
GROUP = "results/activations.zarr/m/0shot"


def write(path, text):
    return (f"import pathlib; p = pathlib.Path({path!r}); p.parent.mkdir(parents=True, exist_ok=True);"
            f"p.write_text({text!r})")


def step(rule, keys, *, wildcards=None, model=None, dataset=None, seeds=None, code):
    return {"rule": rule, "wildcards": wildcards or {}, "params": {"code": code}, "seeds": seeds or {},
            "config_subset": config_subset(CONFIG, keys), "model": model, "dataset": dataset}


def chain(workdir: Path, wrap, groups_dir: str) -> None:
    """Each job through `python -m repgeom.provenance run`, as the workflow's rules call it."""
    (workdir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    dataset = ("import pathlib; d = pathlib.Path('results/dataset'); d.mkdir(parents=True);"
               "(d / 'dev.csv').write_text('q,A,B,C,D,A'); (d / 'test.csv').write_text('q2,A,B,C,D,B')")
    adapter = ("import pathlib; d = pathlib.Path('results/adapters/m-a1'); d.mkdir(parents=True);"
               "(d / 'adapter_model.bin').write_bytes(b'weights' * 100); (d / 'adapter_config.json').write_text('{}')")
    extract = (f"import sys; sys.path.insert(0, {groups_dir!r}); import synthetic;"
               f"synthetic.write_group('results/activations.zarr', 'm/0shot');" + write(
                   "results/extract/m/0shot.accuracy.csv", "acc\n0.5\n"))
    jobs = [
        (step("generate_dataset", ["dataset.generate"], dataset={"generated": True}, seeds={"dataset": 1},
              code=dataset), [], ["results/dataset"], {}),
        (step("prompts", ["shots"], wildcards={"model": "m", "condition": "0shot"},
              code=write("results/prompts/m/0shot.parquet", "prompts")),
         ["results/dataset"], ["results/prompts/m/0shot.parquet"], {}),
        (step("finetune", ["finetune"], wildcards={"model": "m"}, model={"id": "org/base", "revision": "abc123"},
              seeds={"finetune": 0}, code=adapter), ["results/dataset"], ["results/adapters/m-a1"], {}),
        (step("extract", [], wildcards={"model": "m", "condition": "0shot"}, model={"id": "org/base"}, code=extract),
         ["results/prompts/m/0shot.parquet", "results/adapters/m-a1"], ["results/extract/m/0shot.accuracy.csv"],
         {"extra_outputs": [GROUP]}),
        (step("analyze", ["analysis.params"], wildcards={"model": "m", "condition": "0shot"},
              code=write("results/metrics/m/0shot.parquet", "metrics")), [], ["results/metrics/m/0shot.parquet"],
         {"extra_inputs": [GROUP]}),
        (step("run_metrics", [], code=write("results/metrics/all.parquet", "all metrics")),
         ["results/metrics/m/0shot.parquet"], ["results/metrics/all.parquet"], {}),
        (step("accuracy_table", [], code=write("results/tables/accuracy.csv", "table")),
         ["results/extract/m/0shot.accuracy.csv"], ["results/tables/accuracy.csv"], {}),
        (step("figure", [], code=write("results/figures/ari.png", "png")),
         ["results/metrics/all.parquet"], ["results/figures/ari.png"], {}),
    ]
    for meta, inputs, outputs, extra in jobs:
        command = [sys.executable, "-c", meta["params"]["code"]]
        result = wrap(workdir, meta, inputs=inputs, outputs=outputs, command=command, **extra)
        assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, wrap, groups):
    workdir = tmp_path_factory.mktemp("run")
    chain(workdir, wrap, str(Path(groups.__file__).parent))
    return workdir


@pytest.fixture
def run(clean_run, tmp_path, monkeypatch):
    """A private copy of the clean run, as the working directory."""
    workdir = tmp_path / "run"
    shutil.copytree(clean_run, workdir)
    monkeypatch.chdir(workdir)
    return workdir


def audit(capsys, *args) -> tuple[int, list[str]]:
    code = main(["audit", *args])
    return code, capsys.readouterr().out.splitlines()


def sha(path) -> str:
    return hash_path(path)[1][:12]


def recorded(path) -> str:
    record = read_record(path)
    return next(o for o in record["outputs"] if o["path"] == record["artifact"])["sha256"][:12]


def test_clean_run_audits_clean(run, capsys):
    assert audit(capsys, "results") == (0, ["audit: 9 artifacts checked, clean"])
    assert audit(capsys, "results", "--config", "config.yaml", "--strict-code") == (
        0, ["audit: comparing config keys with config.yaml", "audit: 9 artifacts checked, clean"])
    assert read_record(GROUP)["outputs"][1]["sha256"] == zarr_group_hash("results/activations.zarr", "m/0shot")
    module = subprocess.run([sys.executable, "-m", "repgeom.provenance", "audit", "results"], capture_output=True,
                            text=True, timeout=60)
    assert (module.returncode, module.stdout) == (0, "audit: 9 artifacts checked, clean\n")


def test_one_byte_of_a_zarr_chunk(run, capsys):
    before = sha(GROUP)
    chunk = run / GROUP / "reps/c/1/1/0"
    data = bytearray(chunk.read_bytes())
    data[17] ^= 0x01
    chunk.write_bytes(bytes(data))
    now = sha(GROUP)
    assert audit(capsys, "results") == (1, [
        f"TAMPERED {GROUP}: content changed after its record (recorded {before}, now {now})",
        f"STALE results/metrics/m/0shot.parquet: input {GROUP} changed since it was used (used {before}, now {now})",
        "audit: 9 artifacts checked, 2 finding(s): 1 stale, 1 tampered",
    ])


def test_replaced_adapter_file(run, capsys):
    adapter = "results/adapters/m-a1"
    before = recorded(adapter)
    (run / adapter / "adapter_model.bin").write_bytes(b"other weights")
    now = sha(adapter)
    assert audit(capsys, "results") == (1, [
        f"TAMPERED {adapter}: content changed after its record (recorded {before}, now {now})",
        f"STALE {GROUP}: input {adapter} changed since it was used (used {before}, now {now})",
        f"STALE results/extract/m/0shot.accuracy.csv: input {adapter} changed since it was used "
        f"(used {before}, now {now})",
        "audit: 9 artifacts checked, 3 finding(s): 2 stale, 1 tampered",
    ])


def test_adapter_remade_without_rerunning_its_consumers(run, capsys, wrap):
    before = recorded("results/adapters/m-a1")
    remake = ("import pathlib; d = pathlib.Path('results/adapters/m-a1'); d.mkdir(parents=True);"
              "(d / 'adapter_model.bin').write_bytes(b'retrained'); (d / 'adapter_config.json').write_text('{}')")
    shutil.rmtree(run / "results/adapters/m-a1")
    meta = step("finetune", ["finetune"], wildcards={"model": "m"}, code="")
    assert wrap(run, meta, inputs=["results/dataset"], outputs=["results/adapters/m-a1"],
                command=[sys.executable, "-c", remake]).returncode == 0
    now = recorded("results/adapters/m-a1")
    reason = f"input results/adapters/m-a1 was re-made after it was used (used {before}, its record now {now})"
    assert audit(capsys, "results") == (1, [
        f"STALE {GROUP}: {reason}",
        f"STALE results/extract/m/0shot.accuracy.csv: {reason}",
        "audit: 9 artifacts checked, 2 finding(s): 2 stale",
    ])


def test_deleted_prompts_file(run, capsys):
    (run / "results/prompts/m/0shot.parquet").unlink()
    assert audit(capsys, "results") == (1, [
        f"MISSING results/prompts/m/0shot.parquet: input of {GROUP}, results/extract/m/0shot.accuracy.csv "
        "no longer exists",
        "audit: 8 artifacts checked, 1 finding(s): 1 missing",
    ])


def test_config_edited_without_rerunning(run, capsys):
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["analysis"]["params"]["k"] = 32
    config["analysis"]["params"]["z"] = 1.6
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert audit(capsys, "results", "--config", "config.yaml") == (1, [
        "audit: comparing config keys with config.yaml",
        "STALE results/metrics/m/0shot.parquet: config key analysis.params.k changed (recorded 16, now 32)",
        "STALE results/metrics/m/0shot.parquet: config key analysis.params.z changed (recorded absent, now 1.6)",
        "audit: 9 artifacts checked, 2 finding(s): 2 stale",
    ])
    # The workflow's resolved config of its last run is the default comparison.
    (run / "results/config.resolved.json").write_text(json.dumps(config))
    code, lines = audit(capsys, "results")
    assert code == 1 and lines[0] == "audit: comparing config keys with results/config.resolved.json"


def test_config_defaults_come_from_the_schema_beside_it(run, capsys):
    config = yaml.safe_load((run / "config.yaml").read_text())
    del config["analysis"]["params"]["k"]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    schema = {"type": "object", "properties": {"analysis": {"type": "object", "properties": {
        "params": {"type": "object", "properties": {"k": {"type": "integer", "default": 16}}}}}}}
    (run / "schema.yaml").write_text(yaml.safe_dump(schema))
    assert audit(capsys, "results", "--config", "config.yaml")[0] == 0


def test_mixed_code_versions(run, capsys):
    record_file = run / "results/tables/accuracy.csv.prov.json"
    record = json.loads(record_file.read_text())
    common = record["code"]["git_commit"][:12]
    record["code"]["git_commit"] = "0" * 40
    record_file.write_text(json.dumps(record))
    line = f"MIXED_CODE results/tables/accuracy.csv: made by code 000000000000; 8 of 9 artifacts were made by {common}"
    assert audit(capsys, "results") == (0, [
        f"note: {line}", "audit: 9 artifacts checked, clean (1 mixed-code note(s); --strict-code makes them count)"])
    assert audit(capsys, "results", "--strict-code") == (
        1, [line, "audit: 9 artifacts checked, 1 finding(s): 1 mixed code"])


def test_unreadable_and_lost_records(run, capsys):
    (run / "results/metrics/all.parquet.prov.json").write_text("{not json")
    (run / "results/prompts/m/0shot.parquet.prov.json").unlink()
    code, lines = audit(capsys, "results")
    assert code == 1 and lines[0].startswith(
        "MISSING results/metrics/all.parquet: no usable record: provenance record "
        "results/metrics/all.parquet.prov.json is unreadable (JSONDecodeError: ")
    assert lines[1:] == [
        f"MISSING results/prompts/m/0shot.parquet: no provenance record (input of {GROUP})",
        "audit: 9 artifacts checked, 2 finding(s): 2 missing",
    ]


def test_final_file_without_a_record(run, capsys):
    (run / "results/figures/extra.png").write_text("made by hand")
    assert audit(capsys, "results") == (1, ["MISSING results/figures/extra.png: no provenance record",
                                            "audit: 10 artifacts checked, 1 finding(s): 1 missing"])


def test_trace_prints_the_lineage(run, capsys):
    assert main(["audit", "--trace", "results/figures/ari.png"]) == 0
    lines = capsys.readouterr().out.splitlines()
    commit = read_record("results/figures/ari.png")["code"]["git_commit"][:12]
    made = {path: (read_record(path)["ended"], recorded(path)) for path in (
        "results/figures/ari.png", "results/metrics/all.parquet")}
    assert lines[0] == ("results/figures/ari.png  rule figure, code {}, made {}, sha256 {}"
                        .format(commit, *made["results/figures/ari.png"]))
    assert lines[1] == ("  results/metrics/all.parquet  rule run_metrics, code {}, made {}, sha256 {}"
                        .format(commit, *made["results/metrics/all.parquet"]))
    shape = [line.split("  rule ")[0].split(" (see above)")[0].split("  ")[-1].strip() for line in lines]
    assert shape == ["results/figures/ari.png", "results/metrics/all.parquet", "results/metrics/m/0shot.parquet",
                     GROUP, 'model: {"id": "org/base"}', "results/prompts/m/0shot.parquet", "results/dataset",
                     'dataset: {"generated": true}', "results/adapters/m-a1",
                     'model: {"id": "org/base", "revision": "abc123"}', "results/dataset"]
    assert lines[4] == '        model: {"id": "org/base"}'
    assert lines[6].startswith("          results/dataset  rule generate_dataset, ")
    assert lines[-1] == "          results/dataset  (see above)"
    assert GROUP + "  rule extract {condition=0shot, model=m}" in lines[3]


def test_trace_of_an_artifact_without_record(run, capsys):
    assert main(["audit", "--trace", "config.yaml"]) == 1
    assert capsys.readouterr().err == "repgeom audit: error: --trace config.yaml: it has no provenance record\n"


@pytest.mark.parametrize("case, message", [
    ("no results folder", "results folder nowhere does not exist"),
    ("config not YAML", "cannot read config bad.yaml: not valid YAML (line 2, column 1): expected "),
    ("config not a mapping", "cannot read config list.yaml: not a mapping"),
    ("schema not YAML", "cannot read config schema bad.yaml: not valid YAML (line 2, column 1): expected "),
    ("no schema", "cannot read config schema nowhere.yaml: No such file or directory"),
])
def test_bad_audit_input_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys, case, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    (tmp_path / "good.yaml").write_text("results_dir: results\n")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    (tmp_path / "list.yaml").write_text("- 1\n")
    argv = {"no results folder": ["nowhere"], "config not YAML": ["results", "--config", "bad.yaml"],
            "config not a mapping": ["results", "--config", "list.yaml"],
            "schema not YAML": ["results", "--config", "good.yaml", "--schema", "bad.yaml"],
            "no schema": ["results", "--config", "good.yaml", "--schema", "nowhere.yaml"]}[case]
    assert main(["audit", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"repgeom audit: error: {message}") and err.count("\n") == 1, err


def test_real_extraction_under_the_wrapper(tmp_path, monkeypatch, capsys, wrap, tiny_llama_dir):
    """The extraction's own incremental group hash is what the record carries, and it matches the disk."""
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    rows = [{"question_id": f"q{i}", "subject": "s", "gold": "ABCD"[i % 4], "n_shots": 0, "n_tokens": 0,
             "prompt": f"What is {i} plus {i % 3}?\nA. {i}\nB. {i + i % 3}\nC. 1\nD. 2\nAnswer:"} for i in range(24)]
    Path("results/prompts").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet("results/prompts/0shot.parquet")
    meta = step("extract", [], wildcards={"model": "m", "condition": "0shot"}, model={"path": str(tiny_llama_dir)},
                code="")
    command = [sys.executable, "-m", "repgeom.extract", "--model", str(tiny_llama_dir), "--prompts",
               "results/prompts/0shot.parquet", "--store", "results/activations.zarr", "--group", "m/0shot",
               "--accuracy-out", "results/extract/m/0shot.parquet", "--chunk-rows", "10"]
    result = wrap(tmp_path, meta, inputs=["results/prompts/0shot.parquet"],
                  outputs=["results/extract/m/0shot.parquet"], extra_outputs=[GROUP], command=command,
                  env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert result.returncode == 0, result.stderr[-3000:]
    entry = next(o for o in read_record(GROUP)["outputs"] if o["path"] == GROUP)
    attrs = json.loads(Path(GROUP, "zarr.json").read_text())["attributes"]
    assert entry["sha256"] == attrs["content_sha256"] == zarr_group_hash("results/activations.zarr", "m/0shot")
    from repgeom.store import read_layer

    assert read_layer("results/activations.zarr", "m/0shot", 1)[0].shape == (24, 64)  # zarr still reads it
    # The prompts file has no record of its own here: made outside the workflow.
    assert audit(capsys, "results") == (1, [
        f"MISSING results/prompts/0shot.parquet: no provenance record (input of {GROUP})",
        "audit: 3 artifacts checked, 1 finding(s): 1 missing"])
