"""Pure planning functions: parameters, checkpoint steps, learning-rate schedule, and the rows of every step."""
import math

import numpy as np
import pytest

from repgeom.finetune import FinetuneError, checkpoint_steps, default_params, parse_params
from repgeom.finetune.plan import accumulation_steps, learning_rate, rank_micro_batches, step_rows, total_steps


def test_reference_run_checkpoints():
    """1,065 rows, effective batch 16, 4 epochs: 268 steps, as in docs/protocol.md §3.3."""
    params = default_params("8b")
    assert total_steps(1065, parse_params(params)) == 268
    steps = checkpoint_steps(1065, params)
    assert list(steps) == [
        "step1", "step2", "step3", "step6", "step12", "step22", "step42", "step77", "step144", "step268",
        "epoch1", "epoch2", "epoch3", "epoch4"]
    assert [steps[f"epoch{e}"] for e in range(1, 5)] == [67, 134, 201, 268]


def test_log_spaced_steps_are_deduplicated():
    # geomspace(1, 12, 10) rounds to 1, 1, 2, 2, 3, 4, 5, 7, 9, 12.
    assert list(checkpoint_steps(37, {"epochs": 4})) == [
        "step1", "step2", "step3", "step4", "step5", "step7", "step9", "step12", "epoch1", "epoch2", "epoch3", "epoch4"]


def test_schedule_warmup_peak_and_end():
    params = parse_params({"lr": 2e-4})
    lrs = np.array([learning_rate(step, 268, params) for step in range(268)])
    # round(0.05 x 268) = 13 warm-up steps, the 13th (index 12) at the peak.
    assert lrs[0] == pytest.approx(2e-4 / 13)
    assert lrs[6] == pytest.approx(2e-4 * 7 / 13)
    assert lrs[12] == pytest.approx(2e-4) and lrs.max() == pytest.approx(2e-4)
    assert lrs[-1] == pytest.approx(2e-6)  # 1% of the peak on the last step
    assert np.all(np.diff(lrs[:13]) > 0) and np.all(np.diff(lrs[12:]) < 0)
    halfway = 12 + 255 // 2  # the cosine is halfway (to within half a step) between peak and end
    assert lrs[halfway] == pytest.approx((2e-4 + 2e-6) / 2, rel=0.01)
    assert learning_rate(0, 10, parse_params({"warmup_fraction": 0.0})) == pytest.approx(params.lr)


def test_accumulation_is_computed():
    params = parse_params({"effective_batch": 16, "micro_batch": 4})
    assert [accumulation_steps(params, world) for world in (1, 2, 4)] == [4, 2, 1]
    with pytest.raises(FinetuneError, match="not a multiple of micro_batch 4 x 8 rank"):
        accumulation_steps(params, 8)
    with pytest.raises(FinetuneError, match="not a multiple of micro_batch 3"):
        accumulation_steps(parse_params({"micro_batch": 3}), 1)


@pytest.mark.parametrize("world", [1, 2, 4])
def test_every_row_once_an_epoch_on_any_number_of_ranks(world):
    params = parse_params({"micro_batch": 2, "epochs": 2, "seed": 5})
    for epoch in range(2):
        seen = []
        for step in range(epoch * 3, epoch * 3 + 3):
            rows = step_rows(37, params, step)
            shares = [rank_micro_batches(rows, params, world, rank) for rank in range(world)]
            assert all(len(share) == 16 // (2 * world) for share in shares)  # every rank runs every micro-step
            seen.extend(row for share in shares for micro in share for row in micro)
            sizes = [sum(map(len, share)) for share in shares]
            assert max(sizes) - min(sizes) <= params.micro_batch  # a short batch is spread over the ranks
        assert sorted(seen) == list(range(37))
    assert not np.array_equal(step_rows(37, params, 0), step_rows(37, params, 3))  # reshuffled each epoch


def test_default_params():
    small, large = default_params("8b"), default_params("70b")
    assert (small["lora_r"], small["lora_alpha"], small["lora_dropout"], small["lr"]) == (64, 16, 0.1, 2e-4)
    assert (large["lora_r"], large["lora_alpha"], large["lr"]) == (128, 32, 1e-4)
    assert accumulation_steps(parse_params(large), 8) == 1
    assert small["target_modules"] == ["q", "k", "v", "o", "gate", "up", "down"]
    assert small["epochs"] == 4 and small["effective_batch"] == 16 and small["n_checkpoints"] == 10
    assert math.isclose(small["warmup_fraction"], 0.05) and math.isclose(small["final_lr_fraction"], 0.01)
    assert default_params("8b", "prefix_tuning")["lr"] > small["lr"]
    with pytest.raises(FinetuneError, match="unknown size class '13b'"):
        default_params("13b")


@pytest.mark.parametrize("raw, message", [
    ({"learning_rate": 1e-3}, "unknown fine-tuning param.* learning_rate; known: "),
    ({"method": "adapter"}, "method='adapter': expected one of lora, prompt_tuning"),
    ({"micro_batch": 0}, "micro_batch=0: expected a positive integer"),
    ({"epochs": 2.5}, "epochs=2.5: expected an integer"),
    ({"lora_dropout": 1.0}, r"lora_dropout=1.0: expected a fraction in \[0, 1\)"),
    ({"target_modules": "q_proj"}, "target_modules='q_proj': expected a non-empty list"),
    ({"subspace_vertices": 1}, "subspace_vertices=1: expected at least 2"),
])
def test_bad_params_name_the_key(raw, message):
    with pytest.raises(FinetuneError, match=message):
        parse_params(raw)


def test_empty_set_has_no_checkpoints():
    with pytest.raises(FinetuneError, match="fine-tuning set is empty"):
        checkpoint_steps(0, {})


def test_passes_fit_the_token_budget_and_every_rank_runs_as_many():
    from repgeom.finetune.plan import rank_passes, split_into_passes

    lengths = np.array([100, 1000, 90, 80, 500, 400, 30, 20])
    assert [list(p) for p in split_into_passes(np.array([0, 2, 3]), lengths, 1024)] == [[0, 2, 3]]  # fits: as is
    assert [list(p) for p in split_into_passes(np.array([0, 1, 4, 5]), lengths, 1024)] == [[1], [4, 5], [0]]
    params = parse_params({"effective_batch": 8, "micro_batch": 2, "max_batch_tokens": 1024})
    rows = np.arange(8)
    shares = [rank_passes(rows, lengths, params, 2, rank) for rank in range(2)]
    # Micro-step 0: rank 0 has rows 0, 1 (1,000 x 2 > 1,024: two passes), rank 1 rows 2, 3 (one, and a padding pass).
    assert [[list(p) for p in micro] for micro in shares[1]] == [[[2, 3], []], [[6, 7]]]
    assert [len(micro) for micro in shares[0]] == [len(micro) for micro in shares[1]]
    assert sorted(int(row) for share in shares for micro in share for p in micro for row in p) == list(range(8))
