"""One LoRA step on the default's real model (SmolLM2-135M-Instruct imported from GGUF), and its adapter
extracted as a fine-tuned condition."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest


@pytest.mark.slow
def test_one_lora_step_and_its_extraction(smollm2_dir, make_finetune_frame, cli, deepspeed_configs, tmp_path):
    from repgeom.extract.job import ExtractionJob, ExtractionSettings
    from repgeom.store import read_layer

    train = tmp_path / "finetune_set.parquet"
    make_finetune_frame(16).to_parquet(train)
    params = {"lora_r": 4, "epochs": 1, "micro_batch": 8, "n_checkpoints": 1, "lr": 1e-3}  # batch 16: one step
    out = tmp_path / "lora"
    result = cli("--model", smollm2_dir, "--train", train, "--out", out, "--params-json", json.dumps(params),
                 "--deepspeed", deepspeed_configs["zero2"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "checkpoints.json").read_text()) == {"step1": 1, "epoch1": 1}
    log = pd.read_csv(out / "train_log.csv")
    assert log["step"].tolist() == [1] and np.isfinite(log["loss"]).all()

    prompts = tmp_path / "prompts.parquet"
    frame = make_finetune_frame(6)
    pd.DataFrame({"question_id": frame["question_id"], "subject": frame["subject"], "gold": frame["gold"],
                  "n_shots": 0, "prompt": frame["prompt"], "n_tokens": 0}).to_parquet(prompts)
    store = tmp_path / "store.zarr"
    settings = ExtractionSettings(chunk_rows=4, max_batch_tokens=512)
    for group, adapter in (("m/base", None), ("m/ft-lora-step1", str(out / "checkpoints/step1"))):
        summary = ExtractionJob(str(smollm2_dir), prompts, store, group, tmp_path / f"{group[2:]}.parquet", settings,
                                adapter=adapter).run()
        assert summary["n"] == 6
    base, tuned = (read_layer(store, group, 30)[0] for group in ("m/base", "m/ft-lora-step1"))
    assert base.shape == tuned.shape == (6, 576) and np.isfinite(tuned).all()
    assert not np.array_equal(base, tuned)  # the adapter changes the representation
    np.testing.assert_array_equal(read_layer(store, "m/base", 0)[0], read_layer(store, "m/ft-lora-step1", 0)[0])
