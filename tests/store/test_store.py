"""Stored dtypes, the store layout, and clear errors for bad input: a corrupt or partial store, a model path that does
not exist, a prompt set that does not match the group being resumed, a malformed prompts file."""
import json
import re
import shutil

import numpy as np
import pytest
import torch
import zarr

from repgeom.extract.__main__ import main
from repgeom.store import StoreError, group_attrs, n_layers, prompt_set_hash, read_layer


@pytest.fixture(scope="module")
def float32_store(tmp_path_factory, tiny_llama_dir, extract, make_prompts):
    out = tmp_path_factory.mktemp("float32")
    prompts = out / "prompts.parquet"
    make_prompts(24).to_parquet(prompts)
    store, stored, _ = extract(tiny_llama_dir, prompts, out)
    return prompts, store, stored


@pytest.mark.parametrize(("store_dtype", "torch_dtype"), [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_reduced_precision_is_the_exact_rounding(store_dtype, torch_dtype, float32_store, tiny_llama_dir, tmp_path,
                                                 extract):
    prompts, _, float32 = float32_store
    store, stored, _ = extract(tiny_llama_dir, prompts, tmp_path, store_dtype=store_dtype)
    expected = torch.from_numpy(float32).to(torch_dtype).float().numpy()
    assert np.array_equal(stored, expected)  # bit-exact: bf16 kept as raw bits, widened on read
    raw = zarr.open_group(str(store), mode="r")["m/c/reps"]
    assert raw.dtype == (np.uint16 if store_dtype == "bfloat16" else np.float16)
    assert ("encoding" in raw.attrs) == (store_dtype == "bfloat16")


def test_layout_one_layer_per_chunk_column(float32_store, make_prompts):
    _, store, stored = float32_store
    node = zarr.open_group(str(store), mode="r")["m/c"]
    assert node["reps"].shape == (3, 24, 64) and node["reps"].chunks == (1, 10, 64)
    assert node["chunk_done"][:].tolist() == [1, 1, 1]
    attrs = group_attrs(store, "m/c")
    assert attrs["complete"] and attrs["hook"] == "block_input_norm" and attrs["store_dtype"] == "float32"
    assert attrs["model"]["weights_sha256"] and attrs["prompt_set_hash"] == prompt_set_hash(make_prompts(24))
    assert n_layers(store, "m/c") == 3


def test_prompt_set_hash_sees_order_and_text(make_prompts):
    prompts = make_prompts(6)
    assert prompt_set_hash(prompts) == prompt_set_hash(prompts.copy())
    assert prompt_set_hash(prompts) != prompt_set_hash(prompts.iloc[::-1])
    changed = prompts.copy()
    changed.loc[3, "prompt"] += " "
    assert prompt_set_hash(prompts) != prompt_set_hash(changed)


@pytest.fixture
def damaged(float32_store, tmp_path):
    """A private copy of the finished store, to damage."""
    _, store, _ = float32_store
    copy = tmp_path / "store.zarr"
    shutil.copytree(store, copy)
    return copy


def test_corrupt_chunk_is_reported(damaged):
    chunk = damaged / "m/c/reps/c/1/1/0"
    data = bytearray(chunk.read_bytes())
    data[100] ^= 0xFF
    chunk.write_bytes(bytes(data))
    read_layer(damaged, "m/c", 0)  # other layers are untouched
    with pytest.raises(StoreError, match="m/c/reps is corrupt or truncated"):
        read_layer(damaged, "m/c", 1)


def test_missing_array_is_reported(damaged):
    shutil.rmtree(damaged / "m/c/reps")
    with pytest.raises(StoreError, match="lacks array 'reps'"):
        read_layer(damaged, "m/c", 0)


def test_garbage_metadata_is_reported(damaged):
    (damaged / "m/c/zarr.json").write_text("{not json")
    with pytest.raises(StoreError, match="unreadable"):
        group_attrs(damaged, "m/c")


def test_incomplete_group_is_refused(damaged):
    node = zarr.open_group(str(damaged), mode="r+")["m/c"]
    node["chunk_done"][1] = 0
    node.attrs["complete"] = False
    with pytest.raises(StoreError, match=r"incomplete \(2 of 3 row chunks"):
        read_layer(damaged, "m/c", 0)


def test_missing_store_and_group(tmp_path, float32_store):
    with pytest.raises(StoreError, match="does not exist"):
        read_layer(tmp_path / "nothing.zarr", "m/c", 0)
    with pytest.raises(StoreError, match="no group 'm/other'"):
        read_layer(float32_store[1], "m/other", 0)
    with pytest.raises(StoreError, match="layer 7 out of range"):
        read_layer(float32_store[1], "m/c", 7)


def cli(model, prompts, store, out, *extra):
    return main(["--model", str(model), "--prompts", str(prompts), "--store", str(store), "--group", "m/c",
                 "--accuracy-out", str(out / "acc.parquet"), "--chunk-rows", "10", "--model-dtype", "float32", *extra])


def test_resume_with_other_prompts_is_refused(damaged, tiny_llama_dir, tmp_path, capsys, make_prompts):
    node = zarr.open_group(str(damaged), mode="r+")["m/c"]
    node.attrs["complete"] = False
    other = tmp_path / "other.parquet"
    make_prompts(24, seed=1).to_parquet(other)
    assert cli(tiny_llama_dir, other, damaged, tmp_path) == 1
    assert "different prompt set" in capsys.readouterr().err
    assert not (tmp_path / "acc.parquet").exists()


def test_resume_of_partial_store_is_refused(damaged, float32_store, tiny_llama_dir, tmp_path, capsys):
    zarr.open_group(str(damaged), mode="r+")["m/c"].attrs["complete"] = False
    shutil.rmtree(damaged / "m/c/chunk_done")
    assert cli(tiny_llama_dir, float32_store[0], damaged, tmp_path) == 1
    assert "lacks array 'chunk_done'" in capsys.readouterr().err


def test_group_left_by_a_killed_creation_is_recreated(float32_store, tiny_llama_dir, tmp_path, capsys):
    store = tmp_path / "store.zarr"
    zarr.open_group(str(store), mode="a").create_group("m/c").create_array("junk", shape=(2,), dtype="int8")
    assert cli(tiny_llama_dir, float32_store[0], store, tmp_path) == 0
    np.testing.assert_allclose(read_layer(store, "m/c", 1)[0], read_layer(float32_store[1], "m/c", 1)[0], atol=2e-5)
    assert "junk" not in zarr.open_group(str(store), mode="r")["m/c"]


def test_complete_group_only_rewrites_the_accuracy_table(float32_store, tiny_llama_dir, tmp_path, caplog):
    prompts, store, _ = float32_store
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    with caplog.at_level("INFO", logger="repgeom.extract"):
        assert cli(tiny_llama_dir, prompts, store, tmp_path) == 0
    assert (tmp_path / "acc.parquet").exists()
    assert "row chunks to compute" not in caplog.text  # no model loaded, nothing recomputed
    assert before == {p: p.stat().st_mtime_ns for p in store.rglob("*")}


def test_store_path_that_is_a_file(tmp_path, prompts_file, tiny_llama_dir, capsys):
    (tmp_path / "s.zarr").write_text("")
    assert cli(tiny_llama_dir, prompts_file, tmp_path / "s.zarr", tmp_path) == 1
    assert "is a file" in capsys.readouterr().err


def test_missing_model_path(tmp_path, prompts_file, capsys):
    assert cli(tmp_path / "no/such/model", prompts_file, tmp_path / "s.zarr", tmp_path) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: f.drop(columns="gold"), r"lacks column\(s\) \['gold'\]"),
    (lambda f: f.assign(question_id=["q"] * len(f)), "question_id 'q' appears more than once"),
    (lambda f: f.assign(gold=["A"] * 5 + ["E"] + ["B"] * (len(f) - 6)), "row 5: gold 'E'"),
])
def test_malformed_prompts(change, message, tmp_path, tiny_llama_dir, capsys, make_prompts):
    bad = tmp_path / "bad.parquet"
    change(make_prompts(8)).to_parquet(bad)
    assert cli(tiny_llama_dir, bad, tmp_path / "s.zarr", tmp_path) == 1
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "s.zarr" / "m").exists()


def test_identity_is_json(float32_store):
    _, store, _ = float32_store
    attrs = json.loads((store / "m/c/zarr.json").read_text())["attributes"]
    assert attrs["repgeom_format"] == 1 and attrs["layer_names"][0] == "model.layers.0.input_layernorm:output"
