"""An adapter's fingerprint is what it computes: its weights' bytes plus the canonical form of its config, so that the
same adapter saved again (peft writes target_modules, a set, in the process's hash order) still extracts into its
store group."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from repgeom.extract.model_setup import adapter_fingerprint
from repgeom.extract.job import ExtractionJob, ExtractionSettings
from repgeom.store import group_attrs


def rewrite_config(folder, change):
    path = folder / "adapter_config.json"
    config = change(json.loads(path.read_text()))
    path.write_text(json.dumps(dict(reversed(list(config.items()))), indent=4))  # other key order and layout


def reorder_targets(config):
    return {**config, "target_modules": list(reversed(sorted(config["target_modules"])))}


@pytest.fixture
def adapters(lora_dir, tmp_path):
    """Two copies of one LoRA adapter."""
    return [shutil.copytree(lora_dir, tmp_path / name) for name in ("a", "b")]


def fingerprint_of(folder):
    return adapter_fingerprint(str(folder))["weights_sha256"]


def test_config_order_does_not_change_the_fingerprint(adapters):
    first, second = adapters
    rewrite_config(first, lambda c: {**c, "target_modules": sorted(c["target_modules"])})
    rewrite_config(second, reorder_targets)
    assert (first / "adapter_config.json").read_bytes() != (second / "adapter_config.json").read_bytes()
    assert fingerprint_of(first) == fingerprint_of(second)


def test_weights_and_meaningful_config_change_the_fingerprint(adapters):
    first, second = adapters
    before = fingerprint_of(first)
    weights = load_file(second / "adapter_model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + torch.full_like(weights[name], 1e-3)
    save_file(weights, second / "adapter_model.safetensors", metadata={"format": "pt"})
    assert fingerprint_of(second) != before
    rewrite_config(first, lambda c: {**c, "lora_alpha": c["lora_alpha"] * 2})
    assert fingerprint_of(first) != before
    assert adapter_fingerprint(None) is None


def extract(model, prompts, store, adapter):
    job = ExtractionJob(str(model), prompts, store, "m/ft", store.parent / "acc.parquet",
                        ExtractionSettings(chunk_rows=10, max_batch_tokens=300), adapter=str(adapter))
    return job.run()


def test_a_resaved_adapter_still_extracts_into_its_group(adapters, tiny_llama_dir, prompts_file, tmp_path, caplog):
    adapter, _ = adapters
    store = tmp_path / "store.zarr"
    extract(tiny_llama_dir, prompts_file, store, adapter)
    stored = group_attrs(store, "m/ft")["adapter"]
    rewrite_config(adapter, reorder_targets)  # the adapter trained again: same weights, targets in another order
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    caplog.clear()
    with caplog.at_level("INFO", logger="repgeom.extract"):
        extract(tiny_llama_dir, prompts_file, store, adapter)  # used to raise: "... a different adapter ..."
    assert "row chunks to compute" not in caplog.text
    assert group_attrs(store, "m/ft")["adapter"] == stored
    assert before == {p: p.stat().st_mtime_ns for p in store.rglob("*")}

