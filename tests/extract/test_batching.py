"""Tokenisation, truncation, padding, last-token indices, batching and the token sample (no model)."""
import numpy as np
import pytest

from repgeom.extract.batching import (TokenSample, encode_prompts, first_token_index, last_token_index,
                                      length_batches, pad_batch, plan_chunk, position_ids, shared_prefix_groups,
                                      truncate_left)
from repgeom.store.layout import chunk_rows


def test_left_truncation_keeps_bos_and_the_last_tokens(tiny_tokenizer):
    text = "The following are multiple choice questions. " * 20 + "What is 1 plus 1?\nAnswer:"
    full = tiny_tokenizer(text)["input_ids"]
    (cut,) = encode_prompts(tiny_tokenizer, [text], max_length=12)
    assert len(full) > 12 and len(cut) == 12
    assert cut[0] == tiny_tokenizer.bos_token_id and cut[1:] == full[-11:]
    assert encode_prompts(tiny_tokenizer, ["Answer:"], max_length=12) == [tiny_tokenizer("Answer:")["input_ids"]]


def test_truncation_without_bos_keeps_the_last_tokens():
    assert truncate_left([5, 6, 7, 8], 3, bos_id=1) == [6, 7, 8]
    assert truncate_left([1, 6, 7, 8], 3, bos_id=1) == [1, 7, 8]
    assert truncate_left([1, 6], 3, bos_id=1) == [1, 6]


@pytest.mark.parametrize("side", ["left", "right"])
def test_last_token_index_under_padding(side):
    lists = [[1, 2, 3], [1, 2, 3, 4, 5], [1]]
    ids, mask = pad_batch(lists, pad_id=0, side=side)
    last = last_token_index(mask)
    first = first_token_index(mask)
    assert [int(ids[r, last[r]]) for r in range(3)] == [3, 5, 1]
    assert [int(ids[r, first[r]]) for r in range(3)] == [1, 1, 1]
    positions = position_ids(mask)
    assert [positions[r, last[r]].item() for r in range(3)] == [2, 4, 0]  # padding does not shift positions


def test_length_batches_cover_every_prompt_once_within_budget():
    lengths = np.array([5, 40, 12, 33, 7, 7, 90, 1])
    batches = length_batches(lengths, max_batch_tokens=64)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= 64
    assert lengths[batches[0][0]] == 90  # longest first: an out-of-memory batch shows up at once


def test_token_sample_is_seeded_uniform_and_chunk_aligned():
    lengths = np.array([4, 10, 3, 8, 6])
    sample = TokenSample.draw(lengths, size=12, seed=7)
    again = TokenSample.draw(lengths, size=12, seed=7)
    assert np.array_equal(sample.rows, again.rows) and np.array_equal(sample.positions, again.positions)
    assert len(sample.rows) == 12 and (sample.positions < lengths[sample.rows]).all()
    assert len(set(zip(sample.rows.tolist(), sample.positions.tolist()))) == 12
    rows, positions = sample.by_chunk(chunk_rows=2, n_chunks=3)
    filled = rows >= 0
    assert np.array_equal(rows[filled], sample.rows) and np.array_equal(positions[filled], sample.positions)
    for chunk in range(3):
        assert set(rows[chunk][rows[chunk] >= 0] // 2) <= {chunk}
    everything = TokenSample.draw(lengths, size=1000, seed=0)
    assert len(everything.rows) == lengths.sum()


def test_plan_chunk_routes_sampled_tokens_to_their_batch():
    token_lists = [[row] * n for row, n in enumerate((5, 9, 3, 7))]  # no two share a token
    sample_rows = np.array([0, 1, 1, 3, -1])
    sample_positions = np.array([2, 0, 8, 6, -1])
    [plan] = plan_chunk(token_lists, sample_rows, sample_positions, max_batch_tokens=18, min_shared_prefix=4)
    assert plan.length == 0 and plan.n_passes == len(plan.batches) == 2
    slots = np.concatenate([b.sample_slots for b in plan.batches])
    assert sorted(slots.tolist()) == [0, 1, 2, 3]
    for batch in plan.batches:
        assert np.array_equal(batch.rows[batch.sample_batch_rows], sample_rows[batch.sample_slots])
        assert np.array_equal(batch.sample_positions, sample_positions[batch.sample_slots])


def test_shared_prefix_groups_keep_a_token_of_every_row_and_ignore_row_order():
    header, shots_a, shots_b = [1, 2, 3], [10] * 40, [20] * 40
    token_lists = [header + shots_a + [7, 8], header + shots_b + [9], header + [5, 6],
                   header + shots_a + [7, 9, 9], header + shots_b + [9, 4], header + shots_a]
    groups = shared_prefix_groups(token_lists, min_length=32)
    assert [(g.rows.tolist(), g.length) for g in groups] == [([2], 0), ([0, 3, 5], 42), ([1, 4], 43)]
    # Row 5 is the prefix itself: the prefix stops one token short of it.
    assert min(len(token_lists[r]) for r in groups[1].rows) - groups[1].length == 1
    permutation = [5, 3, 1, 0, 4, 2]
    regrouped = shared_prefix_groups([token_lists[i] for i in permutation], min_length=32)
    assert sorted((sorted(permutation[r] for r in g.rows), g.length) for g in regrouped) == \
        sorted((g.rows.tolist(), g.length) for g in groups)
    assert [(g.rows.tolist(), g.length) for g in shared_prefix_groups(token_lists, min_length=50)] == \
        [([0, 1, 2, 3, 4, 5], 0)]


def test_plan_chunk_with_a_shared_prefix_computes_its_sampled_tokens_once():
    prefix = list(range(100, 140))
    token_lists = [prefix + [1, 2, 3], prefix + [4, 5], [9, 9, 9], prefix + [6]]
    sample_rows = np.array([0, 1, 1, 2, 3, -1])
    sample_positions = np.array([41, 5, 40, 1, 39, -1])
    plans = plan_chunk(token_lists, sample_rows, sample_positions, max_batch_tokens=30, min_shared_prefix=32)
    alone, shared = plans
    assert (alone.length, alone.n_passes, [b.rows.tolist() for b in alone.batches]) == (0, 1, [[2]])
    assert shared.length == 40 and shared.first_row in (0, 1, 3)
    # Slots 1 and 4 fall in the prefix (positions 5 and 39): the prefix pass computes them.
    assert shared.prefix_sample_slots.tolist() == [1, 4] and shared.prefix_sample_positions.tolist() == [5, 39]
    # Continuations of 3, 2 and 1 tokens; 4 x 30 tokens of context hold two rows after the 40-token prefix.
    assert [b.rows.tolist() for b in shared.batches] == [[0, 1], [3]] and shared.n_passes == 3
    first = shared.batches[0]
    assert first.sample_slots.tolist() == [0, 2] and first.sample_batch_rows.tolist() == [0, 1]
    assert first.sample_positions.tolist() == [1, 0]  # positions within the continuation
    assert shared.batches[1].sample_slots.tolist() == []


def test_length_batches_after_a_prefix_bound_the_context_too():
    lengths = np.array([10, 10, 10, 10])
    assert [len(b) for b in length_batches(lengths, 40)] == [4]
    # 4 x 40 tokens of context at most: (90 + 10) tokens each, one row per batch.
    assert [len(b) for b in length_batches(lengths, 40, prefix_length=90)] == [1, 1, 1, 1]
    assert [len(b) for b in length_batches(lengths, 40, prefix_length=30)] == [4]


def test_chunk_rows_between_8_and_64_mib_and_capped():
    assert chunk_rows(9181, 4096, 2) == 2048                      # 16 MiB of bf16 rows
    assert chunk_rows(9181, 4096, 2, world_size=8) == 1148        # every rank gets a chunk, still >= 8 MiB
    assert chunk_rows(9181, 4096, 2, world_size=64) == 1024       # never under 8 MiB
    assert chunk_rows(100, 64, 4) == 100                          # capped at N
