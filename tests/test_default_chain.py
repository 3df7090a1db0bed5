"""The embedded default, run for real end to end (with a shortened pre-training, to keep CI fast)."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import run_snakemake

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)


def snakemake(workdir, *args, snakefile=ROOT / "Snakefile"):
    return run_snakemake("--configfile", workdir / "config.yaml", "--cores", "2", *args, workdir=workdir,
                         snakefile=snakefile, timeout=1500)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("default_run")
    config = yaml.safe_load((ROOT / "config/tiny.yaml").read_text())
    config["models"]["tiny-llama"]["build"]["pretrain"]["steps"] = 40
    config["shots"] = [0, 2]
    config["variants"] = {"wrong_answers": [2]}
    # One epoch of 8 steps, adapters at steps 1 and 8 (geomspace(1, 8, 2)) and at the epoch's end.
    config["finetune"]["methods"]["lora"].update(epochs=1, n_checkpoints=2)
    config["extraction"]["chunk_rows"] = 64  # 600 prompts: ten row chunks, the last one short
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir, config


@pytest.mark.slow
def test_default_chain_outputs(default_run):
    workdir, config = default_run
    results = workdir / "results"
    accuracy = pd.read_csv(results / "tables/accuracy.csv")
    finetuned = ["ft-lora-step1", "ft-lora-step8", "ft-lora-epoch1"]
    assert accuracy["condition"].tolist() == ["0shot", "2shot", "2shot-wrong_answers", *finetuned]
    assert (accuracy["model"] == "tiny-llama").all()
    assert (accuracy["n"] == 6 * 100).all() and accuracy["micro"].between(0, 1).all()

    metrics = pd.read_parquet(results / "metrics/all.parquet")
    n_layers = config["models"]["tiny-llama"]["build"]["architecture"]["num_layers"] + 1
    assert sorted(metrics["layer"].unique()) == list(range(n_layers))
    assert {"id_gride", "id_twonn", "n_clusters", "ari_subject", "ari_letter", "label_overlap_subject",
            "local_id_mean", "probe_subject"} <= set(metrics["metric"])
    ari = metrics[metrics["metric"] == "ari_subject"].groupby("condition")["value"].max()
    # Shots from the query's own subject make the last-token representations cluster by subject.
    assert ari["2shot"] > ari["0shot"] + 0.2

    assert set(metrics["condition"]) == set(accuracy["condition"])
    # The all-token sample's local ID, on the configured layers only.
    token_layers = metrics.loc[metrics["metric"] == "token_local_id_mean", "layer"]
    assert sorted(token_layers.unique()) == config["extraction"]["token_sample"]["layers"]
    assert metrics.loc[metrics["metric"] == "token_local_id_mean", "value"].between(1, 128).all()

    # The step-8 and epoch-1 adapters are the same weights: their representations coincide.
    overlap = pd.read_parquet(results / "metrics/overlap.parquet")
    assert set(overlap["condition_a"]) | set(overlap["condition_b"]) == set(accuracy["condition"])
    same = overlap[(overlap["condition_a"] == "ft-lora-step8") & (overlap["condition_b"] == "ft-lora-epoch1")]
    assert len(same) == n_layers and (same["value"].dropna() == 1).all()
    train_log = pd.read_csv(results / "finetune/tiny-llama/lora/train_log.csv")
    assert train_log["step"].tolist() == list(range(1, 9))

    for rule in ("generate_dataset", "sample", "build_model", "finetune", "prompts", "extract", "analyze",
                 "accuracy_table"):
        assert list((results / "logs").glob(f"{rule}*")), rule
        assert list((results / "benchmarks").glob(f"{rule}*")), rule


@pytest.mark.slow
def test_rerun_has_nothing_to_do(default_run):
    workdir, _ = default_run
    result = snakemake(workdir, "-n")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def snakemake_pid(session: int) -> int:
    """The Snakemake process that `make run`, started as session leader `session`, runs."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[3]) == session and any(part.endswith(b"snakemake") for part in command[:2]):
            return int(entry.name)
    raise LookupError("no snakemake process in the session")


@pytest.mark.slow
def test_make_run_killed_then_run_again_equals_an_uninterrupted_run(default_run, tmp_path):
    """The README's command, with Snakemake SIGKILLed while the fine-tuning runs (its jobs run on, orphaned), then
    the same command again: it finishes, and every table and adapter equals the uninterrupted run's."""
    workdir, config = default_run
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "config.yaml").write_text(yaml.safe_dump(config))
    command = ["make", "--no-print-directory", "-C", str(ROOT), "run", f"VENV={Path(VENV_BIN).parent}",
               f"CONFIG={killed / 'config.yaml'}", "CORES=2", f"SNAKEMAKE_ARGS=--directory {killed}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    first = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=env)
    training_log = killed / "results/logs/finetune/tiny-llama/lora.log"
    deadline = time.monotonic() + 900
    while not (training_log.exists() and "step" in training_log.read_text()):
        assert first.poll() is None and time.monotonic() < deadline, "the run ended before the fine-tuning started"
        time.sleep(0.5)
    os.kill(snakemake_pid(first.pid), signal.SIGKILL)
    first.wait(timeout=60)
    assert not (killed / "results/tables/accuracy.csv").exists()

    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1500)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for table in ("tables/accuracy.csv", "metrics/all.parquet", "metrics/overlap.parquet"):
        read = pd.read_csv if table.endswith(".csv") else pd.read_parquet
        pd.testing.assert_frame_equal(read(killed / "results" / table), read(workdir / "results" / table))
    adapters = "finetune/tiny-llama/lora/checkpoints"
    for adapter in (p for p in (workdir / "results" / adapters).iterdir() if p.is_dir()):
        assert ((killed / "results" / adapters / adapter.name / "adapter_model.safetensors").read_bytes()
                == (adapter / "adapter_model.safetensors").read_bytes()), adapter.name


def reordered(value):
    """The same settings with every mapping's keys in reverse order."""
    if isinstance(value, dict):
        return {key: reordered(value[key]) for key in reversed(list(value))}
    return value


@pytest.mark.slow
def test_same_settings_in_another_key_order_have_nothing_to_do(default_run, tmp_path):
    workdir, config = default_run
    (tmp_path / "reordered.yaml").write_text(yaml.safe_dump(reordered(config), sort_keys=False))
    result = snakemake(workdir, "-n", "--configfile", str(tmp_path / "reordered.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]


@pytest.mark.slow
def test_a_copied_checkout_with_its_results_has_nothing_to_do(default_run, tmp_path):
    """No absolute path of the checkout decides a re-run: the workflow and the run's folder copied elsewhere."""
    workdir, _ = default_run
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for part in ("Snakefile", "workflow", "config", "profiles"):
        copy = shutil.copytree if (ROOT / part).is_dir() else shutil.copy2
        copy(ROOT / part, checkout / part)
    moved = checkout / "run"
    shutil.copytree(workdir, moved, symlinks=True)
    result = snakemake(moved, "-n", snakefile=checkout / "Snakefile")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]


@pytest.mark.slow
def test_a_dry_run_leaves_what_the_audit_compares_with(default_run, tmp_path):
    workdir, config = default_run
    resolved = workdir / "results/config.resolved.json"
    before = resolved.read_bytes()
    other = {**config, "analysis": {**config["analysis"], "params": {**config["analysis"]["params"], "Z": 2.5}}}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    result = snakemake(workdir, "-n", "--configfile", str(tmp_path / "other.yaml"))
    assert result.returncode == 0 and "analyze_layers" in result.stdout, result.stderr[-3000:]
    assert resolved.read_bytes() == before
    assert audit(workdir).returncode == 0


@pytest.mark.slow
def test_real_layer_agrees_with_dadapy(default_run):
    """On a layer extracted by the default run, the project's path equals DADApy's own."""
    from sklearn.metrics import adjusted_rand_score

    from repgeom.analysis.layer import layer_metric_rows
    from repgeom.analysis.neighbors import deduplicate
    from repgeom.analysis.params import AnalysisParams
    from repgeom.analysis.geometry import dadapy_reference
    from repgeom.store import read_layer

    workdir, config = default_run
    params = AnalysisParams.coerce(config["analysis"]["params"])
    X, labels = read_layer(workdir / "results/activations.zarr", "tiny-llama/2shot", 3)
    rows = {(r["metric"], r["scale"]): r["value"] for r in layer_metric_rows(X, labels, params)}
    unique, kept, _ = deduplicate(X.astype("float64"))
    reference = dadapy_reference(unique, labels.iloc[kept].reset_index(drop=True), params)

    for n2, ref in zip(reference["id_gride_ranks"], reference["id_gride"]):
        assert rows[("id_gride", int(n2))] == pytest.approx(ref, rel=1e-6)
    assert rows[("id_twonn", 2)] == pytest.approx(reference["id_twonn"], rel=1e-6)
    assert rows[("n_clusters", None)] == reference["n_clusters"]
    assert rows[("label_overlap_subject", None)] == pytest.approx(reference["label_overlap_subject"], rel=1e-12)
    subjects = labels.iloc[kept]["subject"].to_numpy()
    assert rows[("ari_subject", None)] == pytest.approx(adjusted_rand_score(subjects, reference["clusters"]), abs=1e-12)


@pytest.mark.slow
def test_figures_and_report(default_run):
    """The paper's figure set per model, and an HTML report that holds them with captions stating the settings."""
    from repgeom.plots import FIGURE_NAMES

    workdir, config = default_run
    figures = workdir / "results/figures/tiny-llama"
    for name in FIGURE_NAMES:
        png = (figures / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000, name
    report = workdir / "report.html"
    result = snakemake(workdir, "--report", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    html = report.read_text()
    for name in FIGURE_NAMES:
        assert f"{name}.png" in html, name
    assert f"maxk = {config['analysis']['params']['maxk']}" in html


def audit(workdir, *args):
    return subprocess.run([str(Path(VENV_BIN) / "repgeom"), "audit", "results", *args], cwd=workdir,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_audit_of_the_real_run(default_run, tmp_path):
    """A clean run audits clean; a changed chunk, adapter, prompts file or config is caught and named."""
    workdir, config = default_run
    results = workdir / "results"
    clean = audit(workdir)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    trace = subprocess.run([str(Path(VENV_BIN) / "repgeom"), "audit", "--trace", "results/figures/tiny-llama/ari.png"],
                           cwd=workdir, capture_output=True, text=True, timeout=600)
    assert trace.returncode == 0, trace.stderr
    for step in ("model_figures", "run_metrics", "analyze_layers", "extract", "finetune", "prompts", "sample",
                 "build_model", "generate_dataset"):
        assert step in trace.stdout, step

    def caught(path, change, expected):
        before = path.read_bytes()
        change(path)
        try:
            result = audit(workdir)
            assert result.returncode == 1, result.stdout
            assert any(line.startswith(expected) for line in result.stdout.splitlines()), (expected, result.stdout)
        finally:
            path.write_bytes(before)

    def flip_byte(path):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    chunk = next(p for p in sorted((results / "activations.zarr/tiny-llama/2shot/reps").rglob("*")) if p.is_file()
                 and p.name != "zarr.json")
    caught(chunk, flip_byte, "TAMPERED results/activations.zarr/tiny-llama/2shot")
    adapter = results / "finetune/tiny-llama/lora/checkpoints/step1/adapter_model.safetensors"
    caught(adapter, lambda p: p.write_bytes((p.parent.parent / "epoch1/adapter_model.safetensors").read_bytes()),
           "TAMPERED results/finetune/tiny-llama/lora/checkpoints/step1")
    prompts = results / "prompts/tiny-llama/2shot.parquet"
    caught(prompts, lambda p: p.unlink(), "MISSING results/prompts/tiny-llama/2shot.parquet")

    edited = yaml.safe_load((workdir / "config.yaml").read_text())
    edited["analysis"]["params"]["Z"] = 2.0
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(edited))
    stale = audit(workdir, "--config", str(tmp_path / "edited.yaml"), "--schema", str(ROOT / "config/schema.yaml"))
    assert stale.returncode == 1
    assert "config key analysis.params.Z changed (recorded 1.6" in stale.stdout, stale.stdout
    assert audit(workdir).returncode == 0
