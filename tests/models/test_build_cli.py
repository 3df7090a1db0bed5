"""`python -m repgeom.models build`: bad build parameters stop it with one line and exit 1, before any training."""
import json

import pytest

from repgeom.models.__main__ import main

ARCHITECTURE = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64,
                "max_position_embeddings": 128}
PRETRAIN = {"steps": 1, "batch_size": 2, "seq_len": 16, "lr": 0.001, "answer_letter_weight": 1}
PARAMS = {"seed": 0, "vocab_size": 300, "architecture": ARCHITECTURE, "pretrain": PRETRAIN}


@pytest.mark.parametrize("params_json, message", [
    ("{seed: 0", "--params-json is not valid JSON (Expecting property name enclosed in double quotes"),
    ("[1, 2]", "--params-json must be a JSON object, not list"),
    (json.dumps({k: v for k, v in PARAMS.items() if k != "pretrain"}), "--params-json lacks key(s) ['pretrain']"),
    (json.dumps({**PARAMS, "architecture": 4}), "--params-json: architecture must be a JSON object, not int"),
    (json.dumps({**PARAMS, "architecture": {**ARCHITECTURE, "layers": 3}}),
     "--params-json: architecture has unknown key(s) ['layers'] (it takes ['hidden_size', "),
    (json.dumps({**PARAMS, "pretrain": {"steps": 1}}),
     "--params-json: pretrain lacks ['batch_size', 'lr', 'seq_len'] (it takes ["),
])
def test_bad_build_params_are_one_line_and_exit_1(tmp_path, capsys, params_json, message):
    corpus = tmp_path / "corpus.json"
    corpus.write_text(json.dumps(["Answer: A"]))
    status = main(["build", "--corpus", str(corpus), "--params-json", params_json, "--out", str(tmp_path / "model"),
                   "--log-out", str(tmp_path / "log.parquet")])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith(f"repgeom.models: error: {message}"), err
    assert err.count("\n") == 1 and "Traceback" not in err and not (tmp_path / "model").exists()


def test_a_corpus_that_is_not_json_is_one_line(tmp_path, capsys):
    (tmp_path / "corpus.json").write_text("not json")
    status = main(["build", "--corpus", str(tmp_path / "corpus.json"), "--params-json", json.dumps(PARAMS),
                   "--out", str(tmp_path / "model"), "--log-out", str(tmp_path / "log.parquet")])
    err = capsys.readouterr().err
    assert status == 1 and "--corpus: corpus file" in err and "is not valid JSON" in err and err.count("\n") == 1
