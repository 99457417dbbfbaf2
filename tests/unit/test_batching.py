import pytest
import torch

from inpo.data import TokenizedPairs
from inpo.learning.batching import (
    collate,
    cosine_lr_lambda,
    global_batch_indices,
    heldout_split,
    rank_micro_batches,
    steps_per_epoch,
    training_batch,
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
    from inpo.learning.stage import fit_pairs

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
    f = cosine_lr_lambda(100, 0.1, 0.0)  # 10 warmup steps at s+1 / 11
    assert f(0) == pytest.approx(1 / 11) and f(9) == pytest.approx(10 / 11)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5, abs=0.01)
    assert f(99) < 0.01
    assert cosine_lr_lambda(10, 0.0, 0.2)(10) == pytest.approx(0.2)
    assert torch.tensor([f(s) for s in range(10, 100)]).diff().le(1e-12).all()


@pytest.mark.parametrize("total, ratio", [(8, 0.03), (18, 0.1), (24, 0.0), (1000, 0.001)])
def test_no_step_at_peak_before_a_real_warmup(total, ratio):
    """Issue 17: ceil(8 x 0.03) = 1 warmup step at factor (0+1)/1 = 1 ran the first two
    steps at the peak lr. Now at least 3 warmup steps, rising, all below the peak."""
    f = cosine_lr_lambda(total, ratio)
    warm = [f(s) for s in range(3)]
    assert warm[0] <= 0.25 and warm == sorted(warm) and max(warm) < 1.0
    assert max(f(s) for s in range(total)) == pytest.approx(1.0)


def test_a_short_schedule_warms_up_over_half_of_it():
    f = cosine_lr_lambda(2, 0.0)
    assert f(0) == pytest.approx(0.5) and f(1) == pytest.approx(1.0)


def test_heldout_split_is_by_prompt_seeded_and_never_trained_on():
    prompts = [[p] for p in (1, 1, 2, 3, 3, 3, 4, 5, 6, 7, 8, 9) for _ in range(2)]
    train, held = heldout_split(prompts, 0.25, seed=0)
    assert sorted(train + held) == list(range(len(prompts))) and not set(train) & set(held)
    held_prompts = {tuple(prompts[i]) for i in held}
    assert len(held_prompts) == 2  # round(0.25 x 9 distinct prompts)
    assert all(tuple(prompts[i]) not in held_prompts for i in train)  # a prompt: all or none
    assert heldout_split(prompts, 0.25, seed=0) == (train, held)
    assert heldout_split(prompts, 0.25, seed=1) != (train, held)
    assert heldout_split(prompts, 0.0, seed=0) == (list(range(len(prompts))), [])
    assert len(heldout_split([[1]] * 4, 0.5, seed=0)[1]) == 0  # one prompt: never all held
    state = torch.get_rng_state()
    heldout_split(prompts, 0.5, seed=3)
    assert torch.equal(state, torch.get_rng_state())
    capped = heldout_split(prompts, 0.5, seed=0, max_prompts=2)[1]
    assert len({tuple(prompts[i]) for i in capped}) == 2  # 2, not round(0.5 x 9)
    assert heldout_split(prompts, 0.25, seed=0, max_prompts=5) == (train, held)  # not binding


def test_the_heldout_excess_standard_error_counts_prompts_not_pairs():
    from inpo.learning.stage import standard_error

    prompts = [[1], [1], [1], [2], [3], [3]]
    values = torch.tensor([1.0, 1.0, 1.0, 2.0, 6.0, 0.0], dtype=torch.float64)
    means = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)  # one per prompt
    assert standard_error(values, prompts) == pytest.approx((means.std() / 3**0.5).item())
    assert standard_error(values[:3], prompts[:3]) is None  # one prompt: no spread to measure


def test_a_heldout_pair_never_reaches_a_training_batch():
    prompts = [[i // 3] for i in range(60)]  # 20 prompts, 3 pairs each
    train, held = heldout_split(prompts, 0.3, seed=4)
    seen = set()
    for step in range(8 * (len(train) // 8)):  # 8 epochs of batch 8
        batch = training_batch(train, 8, seed=4, step=step)
        assert len(batch) == 8 and not set(batch) & set(held)
        seen.update(batch)
    assert seen <= set(train) and len(seen) > 0.9 * len(train)
    everything = list(range(60))
    assert training_batch(everything, 8, 4, 5) == global_batch_indices(60, 8, 4, 5)


def test_auto_epochs_stop_when_the_heldout_excess_stops_falling():
    from inpo.learning.stage import keeps_improving

    assert keeps_improving([2.0]) and keeps_improving([2.0, 1.0]) and keeps_improving([2, 1, 0.5])
    assert not keeps_improving([2.0, 1.0, 1.0]) and not keeps_improving([2.0, 2.5])


def test_the_learn_stamp_is_the_same_for_a_computed_cache_and_one_read_back(tmp_path):
    """Step checkpoints are kept for the same inputs: a cache the logps stage computed
    (names in the loss's order) and the same cache read back from its file (safetensors
    sorts them) must stamp alike, else a run that recomputed its cache (moved elsewhere)
    and was killed while learning restarts its learn stage from step 0."""
    from safetensors.torch import load_file, save_file

    from inpo.config import InpoConfig
    from inpo.learning.group import cache_from_logps
    from inpo.learning.stage import learn_inputs

    ref, pi_t = torch.randn(3, 2), torch.randn(3, 2)
    computed = cache_from_logps(ref, pi_t)
    save_file(computed, str(tmp_path / "logps.safetensors"))
    read_back = load_file(str(tmp_path / "logps.safetensors"))
    assert list(read_back) != list(computed)
    pairs = TokenizedPairs([[1]] * 3, [[2]] * 3, [[3]] * 3, [1.0] * 3)
    cfg = InpoConfig()
    assert learn_inputs(cfg, computed, pairs) == learn_inputs(cfg, read_back, pairs)
    other = cache_from_logps(ref, pi_t + 1)
    assert learn_inputs(cfg, other, pairs)["logps"] != learn_inputs(cfg, computed, pairs)["logps"]
