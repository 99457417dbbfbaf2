import pytest
import torch

from inpo.data import TokenizedPairs
from inpo.learner.batching import (
    collate,
    cosine_lr_lambda,
    global_batch_indices,
    rank_micro_batches,
    steps_per_epoch,
)


def test_order_is_a_function_of_seed_and_step():
    a = [global_batch_indices(50, 8, seed=3, step=s) for s in range(12)]
    b = [global_batch_indices(50, 8, seed=3, step=s) for s in range(12)]
    assert a == b
    assert a != [global_batch_indices(50, 8, seed=4, step=s) for s in range(12)]
    per_epoch = steps_per_epoch(50, 8)
    first_epoch = sum(a[:per_epoch], [])
    assert len(set(first_epoch)) == len(first_epoch) == 48  # no repeats inside an epoch
    assert a[:per_epoch] != a[per_epoch : 2 * per_epoch]  # reshuffled each epoch


def test_ranks_share_a_global_batch_exactly():
    batch = global_batch_indices(64, 16, seed=0, step=2)
    for world, micro in ((1, 4), (2, 4), (2, 8), (4, 2)):
        parts = [rank_micro_batches(batch, r, world, micro) for r in range(world)]
        flat = [i for p in parts for mb in p for i in mb]
        assert flat == batch
        assert all(len(mb) == micro for p in parts for mb in p)


def test_too_few_pairs():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        global_batch_indices(3, 8, 0, 0)


def test_collate_masks_only_response_tokens():
    pairs = TokenizedPairs(
        prompt=[[1, 2, 3], [4]],
        chosen=[[5, 6], [7, 8, 9]],
        rejected=[[10], [11]],
        p_label=[1.0, 1.0],
    )
    b = collate(pairs, [0, 1], pad_id=0, max_length=100)
    assert b["input_ids"].tolist() == [
        [1, 2, 3, 5, 6],
        [4, 7, 8, 9, 0],
        [1, 2, 3, 10, 0],
        [4, 11, 0, 0, 0],
    ]
    # loss_mask[i] scores input_ids[i + 1]
    assert b["loss_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 0], [0, 0, 1, 0], [1, 0, 0, 0]]
    assert b["attention_mask"].sum(1).tolist() == [5, 4, 4, 2]


def test_collate_never_cuts_a_response():
    pairs = TokenizedPairs(prompt=[[1, 2]], chosen=[[3, 4, 5, 6]], rejected=[[7]], p_label=[1.0])
    assert collate(pairs, [0], pad_id=0, max_length=6)["input_ids"].shape == (2, 6)
    with pytest.raises(ValueError, match=r"pair 0: 2 prompt \+ 4 response tokens"):
        collate(pairs, [0], pad_id=0, max_length=5)
    empty = TokenizedPairs(prompt=[[1, 2]], chosen=[[]], rejected=[[7]], p_label=[1.0])
    with pytest.raises(ValueError, match="empty"):
        collate(empty, [0], pad_id=0, max_length=50)


def test_fit_pairs_drops_and_counts_what_does_not_fit():
    from inpo.learn import fit_pairs

    pairs = TokenizedPairs(
        prompt=[[1] * 3, [1] * 8, [1] * 2],
        chosen=[[2] * 2, [2] * 1, [2] * 6],
        rejected=[[3] * 4, [3] * 1, [3] * 1],
        p_label=[0.9, 1.0, 0.6],
    )
    kept, dropped = fit_pairs(pairs, max_length=8)
    assert dropped == 1  # 8 + 1 > 8
    assert kept.prompt == [[1] * 3, [1] * 2] and kept.p_label == [0.9, 0.6]


def test_cosine_schedule():
    f = cosine_lr_lambda(100, 0.1, 0.0)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5, abs=0.01)
    assert f(99) < 0.01
    assert cosine_lr_lambda(10, 0.0, 0.2)(10) == pytest.approx(0.2)
    assert torch.tensor([f(s) for s in range(10, 100)]).diff().le(1e-12).all()
