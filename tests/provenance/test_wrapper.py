"""The job wrapper: what a record holds, exit codes and signals passed through, no record on failure, stale records
removed first, input hashes taken from a matching record."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repgeom.provenance import config_sha256, config_subset, hash_path, read_record, record_path, write_record
from repgeom.provenance.hashing import stat_signature
from repgeom.provenance.records import code_version, host_info

META = {"rule": "step", "wildcards": {"model": "m"}, "params": {"k": 3}, "config_subset": {"a.b": 1},
        "seeds": {"sampling": 42}, "model": {"id": "org/model", "revision": "r1"}, "dataset": None}


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_record_of_a_file_and_a_folder(tmp_path, wrap, code_repo):
    (tmp_path / "in.txt").write_text("input")
    result = wrap(tmp_path, META, inputs=["in.txt"], outputs=["out/a.txt", "out/folder"], command=py(
        "import pathlib; pathlib.Path('out/folder').mkdir(parents=True); pathlib.Path('out/a.txt').write_text('a');"
        "pathlib.Path('out/folder/x').write_text('x')"))
    assert result.returncode == 0, result.stderr
    assert "provenance: recorded 2 output(s) of rule step" in result.stderr
    assert record_path(tmp_path / "out/folder") == tmp_path / "out/folder.prov.json"
    record = read_record(tmp_path / "out/a.txt")
    assert record == json.loads((tmp_path / "out/a.txt.prov.json").read_text())
    assert record["artifact"] == "out/a.txt" and read_record(tmp_path / "out/folder")["artifact"] == "out/folder"
    assert {k: record[k] for k in ("rule", "wildcards", "params", "seeds", "model", "dataset", "config_subset")} == META
    assert record["schema_version"] == 1 and record["config_sha256"] == config_sha256({"a.b": 1})
    assert record["inputs"] == [{"path": "in.txt", "kind": "file", "sha256": hash_path(tmp_path / "in.txt")[1],
                                 "hash_from": "content"}]
    outputs = {o["path"]: o for o in record["outputs"]}
    folder = tmp_path / "out/folder"
    assert outputs["out/folder"] == {"path": "out/folder", "kind": "dir", "sha256": hash_path(folder)[1],
                                     **stat_signature(folder)}
    assert outputs["out/a.txt"]["size"] == 1
    commit = subprocess.run(["git", "-C", str(code_repo), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    assert record["code"] == {"git_commit": commit, "dirty": False, "diff_sha256": None}
    assert set(record["versions"]) == {"python", "torch", "transformers", "peft", "deepspeed", "zarr", "dadapy",
                                       "pandas", "numpy", "repgeom"}
    assert record["versions"]["zarr"] and set(record["host"]) == {"hostname", "gpu_model", "gpu_count",
                                                                  "slurm_job_id"}
    assert record["command"][0] == sys.executable and record["workdir"] == str(tmp_path)
    assert record["started"] <= record["ended"] and record["started"].endswith("Z") and record["duration_s"] >= 0


def test_zarr_group_output_is_recorded_in_its_attributes(tmp_path, wrap, groups):
    script = (f"import sys; sys.path.insert(0, {str(Path(groups.__file__).parent)!r}); import synthetic;"
              "synthetic.write_group('s.zarr', 'm/c')")
    result = wrap(tmp_path, META, outputs=["acc.csv"], extra_outputs=["s.zarr/m/c"],
                  command=py(script + "; open('acc.csv', 'w').write('0.5')"))
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "s.zarr/m/c.prov.json").exists()
    attrs = json.loads((tmp_path / "s.zarr/m/c/zarr.json").read_text())["attributes"]
    record = attrs["provenance"]
    assert record == read_record(tmp_path / "s.zarr/m/c") and record["artifact"] == "s.zarr/m/c"
    entry = next(o for o in record["outputs"] if o["path"] == "s.zarr/m/c")
    assert entry["kind"] == "zarr"
    assert entry["sha256"] == attrs["content_sha256"] == hash_path(tmp_path / "s.zarr/m/c")[1]
    assert read_record(tmp_path / "acc.csv")["outputs"] == record["outputs"]


@pytest.mark.parametrize("code", [1, 3])
def test_failure_propagates_the_exit_code_and_leaves_no_record(tmp_path, wrap, code):
    (tmp_path / "out.txt").write_text("old")
    write_record(tmp_path / "out.txt", {"stale": True})  # a previous run's
    result = wrap(tmp_path, META, outputs=["out.txt"],
                  command=py(f"import sys; open('out.txt', 'w').write('half'); sys.exit({code})"))
    assert result.returncode == code
    assert not (tmp_path / "out.txt.prov.json").exists()


def test_stale_record_is_removed_before_the_command_runs(tmp_path, wrap):
    write_record(tmp_path / "out.txt", {"stale": True})
    result = wrap(tmp_path, META, outputs=["out.txt"],
                  command=py("import os; print(os.path.exists('out.txt.prov.json'))"))
    assert result.stdout.strip() == "False"
    assert result.returncode == 1 and "did not make its output out.txt" in result.stderr


def test_outputs_named_by_the_command_are_matched_after_it_succeeds(tmp_path, wrap):
    """A training run decides its adapter folders; a pattern records each one, and drops a stale record first."""
    write_record(tmp_path / "ckpt/step1", {"stale": True})
    make = "import pathlib\nfor name in ('step1', 'epoch1'):\n    d = pathlib.Path('ckpt', name); d.mkdir(parents=True)\n" \
           "    (d / 'adapter.bin').write_text(name)"
    result = wrap(tmp_path, META, outputs=[], output_globs=["ckpt/*"], command=py(make))
    assert result.returncode == 0, result.stderr
    for name in ("step1", "epoch1"):
        record = read_record(tmp_path / "ckpt" / name)
        assert record["artifact"] == f"ckpt/{name}" and record["outputs"][0]["kind"] == "dir"
        assert sorted(o["path"] for o in record["outputs"]) == ["ckpt/epoch1", "ckpt/step1"]


def test_stale_record_of_a_zarr_group_is_removed(tmp_path, wrap, synthetic_group):
    synthetic_group(tmp_path / "s.zarr", "m/c")
    write_record(tmp_path / "s.zarr/m/c", {"stale": True})
    check = ("import json; print('provenance' in json.load(open('s.zarr/m/c/zarr.json'))['attributes']);"
             "raise SystemExit(4)")
    result = wrap(tmp_path, META, extra_outputs=["s.zarr/m/c"], command=py(check))
    assert (result.returncode, result.stdout.strip()) == (4, "False")


def test_death_by_signal_is_passed_on(tmp_path, wrap):
    result = wrap(tmp_path, META, outputs=["x"], command=py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    assert result.returncode == -signal.SIGKILL


def test_sigterm_is_forwarded_to_the_command(tmp_path, code_repo):
    child = ("import pathlib, signal, sys, time\n"
             "def stop(*_):\n    pathlib.Path('got_term').touch(); sys.exit(7)\n"
             "signal.signal(signal.SIGTERM, stop)\npathlib.Path('ready').touch()\ntime.sleep(60)\n")
    argv = [sys.executable, "-m", "repgeom.provenance", "run", "--meta", json.dumps(META), "--inputs", "--outputs",
            "x", "--", *py(child)]
    wrapper = subprocess.Popen(argv, cwd=tmp_path, env={**os.environ, "REPGEOM_CODE_DIR": str(code_repo)})
    deadline = time.monotonic() + 60
    while not (tmp_path / "ready").exists():
        assert time.monotonic() < deadline and wrapper.poll() is None
        time.sleep(0.05)
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(timeout=60) == 7
    assert (tmp_path / "got_term").exists() and not (tmp_path / "x.prov.json").exists()


def test_input_hash_is_taken_from_its_record_while_size_and_mtime_match(tmp_path, wrap):
    data = tmp_path / "in.txt"
    data.write_text("input")
    fake = "f" * 64  # what the record says: proof the file was not read again
    write_record(data, {"schema_version": 1, "artifact": "in.txt", "inputs": [],
                        "outputs": [{"path": "in.txt", "kind": "file", "sha256": fake, **stat_signature(data)}]})
    copy = py("import shutil; shutil.copy('in.txt', 'out.txt')")
    assert wrap(tmp_path, META, inputs=["in.txt"], outputs=["out.txt"], command=copy).returncode == 0
    assert read_record(tmp_path / "out.txt")["inputs"][0] == {"path": "in.txt", "kind": "file", "sha256": fake,
                                                                   "hash_from": "record"}
    data.write_text("input, changed")
    assert wrap(tmp_path, META, inputs=["in.txt"], outputs=["out.txt"], command=copy).returncode == 0
    entry = read_record(tmp_path / "out.txt")["inputs"][0]
    assert (entry["sha256"], entry["hash_from"]) == (hash_path(data)[1], "content")


@pytest.mark.parametrize(("meta", "message"), [
    ("{not json", "--meta is not valid JSON"),
    ("not json", "--meta: 'not json' is neither JSON nor an existing JSON file"),
    ("@missing.json", "--meta: cannot read 'missing.json'"),
    ('{"wildcards": {}}', "--meta lacks 'rule'"),
    ('{"rule": "r", "parameters": {}}', "unknown key(s) ['parameters']"),
])
def test_bad_meta_stops_before_the_command_in_one_line(tmp_path, code_repo, meta, message):
    argv = [sys.executable, "-m", "repgeom.provenance", "run", "--meta", meta, "--outputs", "x", "--",
            *py("open('ran', 'w')")]
    result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and not (tmp_path / "ran").exists()
    assert result.stderr.startswith("repgeom run: error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_missing_input_stops_before_the_command(tmp_path, wrap):
    result = wrap(tmp_path, META, inputs=["nope.parquet"], outputs=["x"], command=py("open('ran', 'w')"))
    assert result.returncode == 1 and result.stderr == "repgeom run: error: input nope.parquet does not exist\n"
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("argv, message", [
    (["run", "--meta", "{}"], "give the command after `--`"),
    (["run", "--meta", "{}", "--"], "the command after `--` is empty"),
    (["audit"], "give the results folder (or --trace ARTIFACT)"),
])
def test_usage_errors_exit_2(argv, message, capsys):
    from repgeom.provenance.cli import main

    with pytest.raises(SystemExit) as usage:
        main(argv)
    assert usage.value.code == 2 and message in capsys.readouterr().err


def test_config_subset_takes_dotted_keys():
    config = {"analysis": {"params": {"k": 16, "z": 1.6}}, "models": {"Llama-3.1-8B": {"hub": "x"}}, "shots": (0, 5)}
    subset = config_subset(config, ["analysis.params", "models.Llama-3.1-8B.hub", "shots", "no.such"])
    assert subset == {"analysis.params": {"k": 16, "z": 1.6}, "models.Llama-3.1-8B.hub": "x", "shots": [0, 5],
                      "no.such": None}
    assert config_sha256(subset) == config_sha256(dict(reversed(subset.items())))


def test_code_version_of_a_dirty_tree_and_of_no_checkout(tmp_path, monkeypatch, code_repo):
    repo = tmp_path / "repo"
    subprocess.run(["cp", "-r", str(code_repo), str(repo)], check=True)
    monkeypatch.setenv("REPGEOM_CODE_DIR", str(repo))
    clean = code_version()
    assert clean["dirty"] is False and len(clean["git_commit"]) == 40
    (repo / "stage.py").write_text("print('v2')\n")
    edited = code_version()
    assert edited["dirty"] is True and edited["git_commit"] == clean["git_commit"] and edited["diff_sha256"]
    (repo / "new.py").write_text("x = 1\n")
    assert code_version()["diff_sha256"] != edited["diff_sha256"]
    monkeypatch.setenv("REPGEOM_CODE_DIR", str(tmp_path / "nowhere"))
    assert code_version() == {"git_commit": None, "dirty": None, "diff_sha256": None,
                              "note": f"{tmp_path / 'nowhere'} is not a git checkout"}


def test_host_without_nvidia_smi_counts_visible_devices(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    host = host_info()
    assert (host["gpu_model"], host["gpu_count"], host["slurm_job_id"]) == (None, 2, "123")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert host_info()["gpu_count"] == 0
