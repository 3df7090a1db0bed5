"""The logit lens on the answer letters (the store's `letter_logprob_layers`, the extraction's lens table): at the
last layer it is the stored prediction, bit for bit; at the inner layers the model's own final norm and LM head
applied by hand to the residual stream entering each block; the table's numbers from a hand-made lens; and a group
written before the lens was kept still resumes and reads, its lens table empty."""
import logging
import shutil

import numpy as np
import pandas as pd
import pytest
import zarr
from transformers import AutoModelForCausalLM

from repgeom.extract.accuracy import LENS_COLUMNS, lens_frame
from repgeom.extract.job import ExtractionJob, ExtractionSettings
from repgeom.models.loading import load_tokenizer
from repgeom.store import read_layer, read_letter_lens
from repgeom.store.writing import CHUNK_SHA256, CODECS

SETTINGS = dict(model_dtype="float32", chunk_rows=10, max_batch_tokens=300)


def run(model_dir, prompts, out):
    ExtractionJob(str(model_dir), prompts, out / "store.zarr", "m/c", out / "acc.parquet",
                  ExtractionSettings(**SETTINGS), lens_out=out / "lens.parquet").run()


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, tiny_llama_dir, make_prompts):
    """24 prompts of 0-3 shots in 3 row chunks, in padded batches."""
    out = tmp_path_factory.mktemp("lens")
    prompts = out / "prompts.parquet"
    make_prompts(24).to_parquet(prompts)
    run(tiny_llama_dir, prompts, out)
    return prompts, out


def test_last_layer_is_the_prediction_and_inner_layers_the_final_norm_and_head(extracted, tiny_llama_dir,
                                                                               lens_by_hand):
    prompts, out = extracted
    lens, _ = read_letter_lens(out / "store.zarr", "m/c")
    assert lens.shape == (24, 3, 4) and lens.dtype == np.float32
    stored_prediction = zarr.open_group(str(out / "store.zarr"), mode="r")["m/c/letter_logprob"][:]
    assert np.array_equal(lens[:, -1], stored_prediction)  # the very tensor the prediction is stored from
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    expected = lens_by_hand(model, load_tokenizer(str(tiny_llama_dir)), pd.read_parquet(prompts))
    np.testing.assert_allclose(lens, expected, atol=1e-4, rtol=1e-4)
    assert np.abs(lens[:, 0] - lens[:, -1]).max() > 1e-2  # the layers differ


def test_the_job_writes_the_lens_by_layer(extracted):
    _, out = extracted
    table = pd.read_parquet(out / "lens.parquet")
    lens, frame = read_letter_lens(out / "store.zarr", "m/c")
    pd.testing.assert_frame_equal(table, lens_frame(frame["gold"], lens))
    assert table["layer"].tolist() == [0, 1, 2] and (table["n"] == 24).all()
    # At the last layer, the accuracy table's constrained accuracy.
    assert table["accuracy"].iloc[-1] == pd.read_parquet(out / "acc.parquet")["correct"].mean()


def test_lens_table_from_a_hand_made_lens():
    probabilities = np.array([[[0.1, 0.2, 0.3, 0.4], [0.5, 0.1, 0.1, 0.1]],   # gold D: right, then wrong
                              [[0.4, 0.3, 0.2, 0.1], [0.1, 0.1, 0.1, 0.6]]])  # gold A: right, then wrong
    table = lens_frame(["D", "A"], np.log(probabilities))
    assert list(table.columns) == list(LENS_COLUMNS)
    assert table["layer"].tolist() == [0, 1] and table["n"].tolist() == [2, 2]
    assert table["accuracy"].tolist() == [1.0, 0.0]
    np.testing.assert_allclose(table["gold_prob"], [0.4, (0.1 / 0.8 + 0.1 / 0.9) / 2])  # renormalised over A-D
    np.testing.assert_allclose(table["gold_prob_full"], [0.4, 0.1])


def as_before_the_lens(store):
    """The group as an older version wrote it: no lens array, and no lens file among each row chunk's digests."""
    node = zarr.open_group(str(store), mode="r+")["m/c"]
    digests = node[CHUNK_SHA256][:]
    lens_file = node["reps"].shape[0] + 2  # after each layer's reps, letter_logprob and argmax_token
    del node["letter_logprob_layers"]
    kept = np.delete(digests, lens_file, axis=1)
    node.create_array(CHUNK_SHA256, shape=kept.shape, chunks=(1, *kept.shape[1:]), dtype="uint8", fill_value=0,
                      overwrite=True, **CODECS)[:] = kept


def test_a_group_from_before_the_lens_resumes_and_reads(extracted, tiny_llama_dir, tmp_path, caplog):
    prompts, reference = extracted
    store = shutil.copytree(reference / "store.zarr", tmp_path / "store.zarr")
    as_before_the_lens(store)
    node = zarr.open_group(str(store), mode="r+")["m/c"]
    node.attrs["complete"] = False
    node["chunk_done"][1] = 0  # killed before its second row chunk
    with caplog.at_level(logging.INFO, logger="repgeom.extract"):
        run(tiny_llama_dir, prompts, tmp_path)
    assert "1 of 3 row chunks to compute (2 done before)" in caplog.text
    assert "created before the logit lens was kept" in caplog.text
    assert "letter_logprob_layers" not in zarr.open_group(str(store), mode="r")["m/c"]
    assert read_letter_lens(store, "m/c") is None
    np.testing.assert_allclose(read_layer(store, "m/c", 1)[0], read_layer(reference / "store.zarr", "m/c", 1)[0],
                               atol=1e-6)
    lens = pd.read_parquet(tmp_path / "lens.parquet")
    assert lens.empty and list(lens.columns) == list(LENS_COLUMNS)
    assert (tmp_path / "acc.parquet").exists()

    caplog.clear()  # complete now: its digests (without a lens file) verify, nothing is computed
    with caplog.at_level(logging.INFO, logger="repgeom.extract"):
        run(tiny_llama_dir, prompts, tmp_path)
    assert "3 row chunks marked done verified against their digests" in caplog.text and "intact" in caplog.text
    assert "row chunks to compute" not in caplog.text
    assert "extracted before the logit lens was kept: its lens table has no rows" in caplog.text
