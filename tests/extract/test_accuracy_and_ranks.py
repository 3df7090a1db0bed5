"""Accuracy summaries, the accuracy table's file, and rank discovery from torchrun or Slurm variables."""
import os

import pandas as pd
import pytest
import torch

from repgeom.extract import accuracy_summary, read_accuracy_metadata
from repgeom.extract.accuracy import write_accuracy
from repgeom.distributed import LaunchError, RankInfo, init_process_group, rank_info_from_env


def frame():
    return pd.DataFrame({"question_id": list("abcdef"), "subject": ["x", "x", "x", "x", "y", "y"],
                         "gold": list("AAAAAA"), "correct": [True, True, True, False, False, False],
                         "correct_argmax": [True, False, False, False, False, True]})


def test_micro_and_macro():
    summary = accuracy_summary(frame())
    assert summary == {"micro": 0.5, "macro": pytest.approx((0.75 + 0.0) / 2), "micro_argmax": pytest.approx(2 / 6),
                       "macro_argmax": pytest.approx((0.25 + 0.5) / 2), "n": 6}


def test_table_is_written_atomically_with_its_summary(tmp_path):
    out = tmp_path / "sub" / "acc.parquet"
    write_accuracy(frame(), out, {"group": "m/c"})
    assert [p.name for p in out.parent.iterdir()] == ["acc.parquet"]  # no temporary left behind
    assert read_accuracy_metadata(out)["macro"] == pytest.approx(0.375)
    assert read_accuracy_metadata(out)["group"] == "m/c"
    pd.testing.assert_frame_equal(pd.read_parquet(out), frame())


@pytest.mark.parametrize(("env", "expected"), [
    ({}, RankInfo(0, 1, 0)),
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, RankInfo(1, 2, 1)),
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1"}, RankInfo(3, 4, 1)),
])
def test_rank_from_environment(env, expected, monkeypatch):
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
    environ = {k: v for k, v in os.environ.items() if k not in names}
    monkeypatch.setattr(os, "environ", {**environ, **env})  # Slurm's values get exported: keep them in the test
    assert rank_info_from_env() == expected
    if "SLURM_NTASKS" in env:  # exported under torchrun's names for torch.distributed and DeepSpeed
        assert os.environ["WORLD_SIZE"] == "4" and os.environ["RANK"] == "3"


def test_several_ranks_need_a_rendezvous(monkeypatch):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(LaunchError, match="MASTER_ADDR"):
        init_process_group(RankInfo(0, 2, 0), zero3=False, device=torch.device("cpu"))
