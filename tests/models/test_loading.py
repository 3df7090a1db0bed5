import pytest
import torch

from repgeom.models.loading import (ModelLoadError, answer_letter_token_ids, load_model, load_tokenizer,
                                    model_fingerprint)


def test_load_by_path_roundtrip(tiny_llama_dir):
    tokenizer = load_tokenizer(str(tiny_llama_dir))
    model = load_model(str(tiny_llama_dir), dtype="float32")
    assert model.dtype == torch.float32 and not model.training
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    ids = tokenizer("Answer:")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id  # BOS is added by the tokenizer


def test_answer_letters_are_single_space_prefixed_tokens(tiny_llama_dir):
    tokenizer = load_tokenizer(str(tiny_llama_dir))
    ids = answer_letter_token_ids(tokenizer)
    assert sorted(ids) == ["A", "B", "C", "D"]
    assert [tokenizer.convert_ids_to_tokens(i) for i in ids.values()] == ["ĠA", "ĠB", "ĠC", "ĠD"]


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "no" / "model"
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(missing))


def test_hub_id_offline_says_how_to_use_local_copy(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="local-dir"):
        load_tokenizer("meta-llama/Meta-Llama-3-8B")


def test_folder_without_weights(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        load_model(str(tmp_path))


def test_fingerprint_changes_with_weights(tiny_llama_dir, tmp_path):
    first = model_fingerprint(str(tiny_llama_dir))
    assert first == model_fingerprint(str(tiny_llama_dir))
    assert model_fingerprint("meta-llama/Meta-Llama-3-8B", "abc") == {"model_id": "meta-llama/Meta-Llama-3-8B", "revision": "abc"}


def _not_a_model(tmp_path, case):
    """A folder that is not a model: random files, nothing at all, or a config.json alone."""
    folder = tmp_path / case.replace(" ", "_")
    folder.mkdir()
    if case == "random files":
        for name in ("notes.txt", "data.csv", "run.log", "a.py", "b.py", "c.py", "d.py"):
            (folder / name).write_text("not a model\n")
        (folder / "sub").mkdir()
    elif case == "config only":
        (folder / "config.json").write_text('{"model_type": "llama"}')
    return folder


@pytest.mark.parametrize("case, loader, message", [
    ("random files", load_tokenizer, r"holds no model or tokenizer .*: it holds 8 entries: a.py, b.py, c.py, d.py, "
                                     r"data.csv, … \(3 more\)"),
    ("random files", load_model, r"holds no model or tokenizer .*: it holds 8 entries: a.py, b.py, c.py"),
    ("empty", load_tokenizer, r"holds no model or tokenizer \(no config.json, no tokenizer files\): it is empty"),
    ("empty", load_model, r"holds no model or tokenizer \(no config.json, no tokenizer files\): it is empty"),
    ("config only", load_tokenizer, r"holds no tokenizer \(none of tokenizer.json, .*\): it holds 1 entry: config.json"),
    ("config only", load_model, r"holds no model weights \(a config.json but no .*\): it holds 1 entry: config.json"),
])
def test_folder_that_is_not_a_model_is_named_with_its_contents(tmp_path, case, loader, message):
    folder = _not_a_model(tmp_path, case)
    with pytest.raises(ModelLoadError, match=message) as caught:
        loader(str(folder))
    assert f"folder {str(folder)!r}" in str(caught.value)
    assert "sentencepiece" not in str(caught.value)


@pytest.mark.parametrize("damage", ["tokenizer.json", "config.json"])
def test_transformers_errors_on_a_damaged_folder_become_model_load_errors(tmp_path, tiny_llama_dir, damage):
    """Whatever transformers or tokenizers raise (KeyError, OSError, ValueError, …) names the folder."""
    import shutil

    folder = tmp_path / "damaged"
    shutil.copytree(tiny_llama_dir, folder)
    (folder / damage).write_text('{"version": "1.0", "model": 5}' if damage == "tokenizer.json" else "{not json")
    loader = load_tokenizer if damage == "tokenizer.json" else load_model
    with pytest.raises(ModelLoadError, match=rf"could not load the (tokenizer|model) from folder '{folder}' \(\w+Error: "):
        loader(str(folder))


def test_model_path_that_is_a_file(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="is a file, not a folder"):
        load_model(str(tmp_path / "config.json"))


def test_offline_hint_when_hub_offline_is_already_set(monkeypatch):
    from repgeom.models.loading import _offline_hint

    error = OSError("We couldn't connect to 'https://huggingface.co'")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = str(_offline_hint("meta-llama/Meta-Llama-3-8B", error))
    assert "HF_HUB_OFFLINE is set" in message and "not in it" in message and "local Hugging Face cache" in message
    assert "huggingface-cli download meta-llama/Meta-Llama-3-8B --local-dir DIR" in message and "`path`" in message
    assert "set HF_HUB_OFFLINE=1" not in message
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    message = str(_offline_hint("meta-llama/Meta-Llama-3-8B", error))
    assert "set HF_HUB_OFFLINE=1 to use a copy already in the HF cache" in message and "--local-dir DIR" in message


def test_hub_id_offline_says_it_is_not_cached(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set.*not in it") as caught:
        load_model("meta-llama/Meta-Llama-3-8B")
    assert "set HF_HUB_OFFLINE=1" not in str(caught.value)


def test_auto_dtype_is_bf16_where_the_hardware_computes_it():
    import torch

    from repgeom.models.loading import cpu_has_native_bf16, default_dtype

    assert cpu_has_native_bf16("flags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni")
    assert cpu_has_native_bf16("flags\t\t: fpu amx_bf16 amx_tile")
    assert not cpu_has_native_bf16("flags\t\t: fpu sse2 avx2 avx512f avx512bw")
    assert default_dtype("cuda") == torch.bfloat16
    assert default_dtype("cpu") == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
