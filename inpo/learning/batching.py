"""Data order, padding and batch log-probs for the learner: no DeepSpeed.

The order is a function of (seed, step) only, so a run resumed at step s sees
exactly the batches an uninterrupted run would, and 1 rank or N ranks see the
same global batches (each rank takes a contiguous share of every one).
"""

from __future__ import annotations

import math
import random

import torch

from inpo.algo.loss import sequence_logps
from inpo.data import TokenizedPairs


def steps_per_epoch(num_pairs: int, global_batch: int) -> int:
    """Full global batches per epoch; the remainder of a shuffled epoch is left out."""
    return num_pairs // global_batch


def global_batch_indices(num_pairs: int, global_batch: int, seed: int, step: int) -> list[int]:
    """Pair indices of global step ``step`` (steps count across epochs)."""
    per_epoch = steps_per_epoch(num_pairs, global_batch)
    if per_epoch == 0:
        raise ValueError(f"{num_pairs} pairs are fewer than one global batch of {global_batch}")
    epoch, b = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(num_pairs, generator=gen)
    return perm[b * global_batch : (b + 1) * global_batch].tolist()


def training_batch(train_ids: list[int], global_batch: int, seed: int, step: int) -> list[int]:
    """Pair indices of global step ``step``, drawn from ``train_ids`` only (held-out pairs
    never reach a batch); with every pair in training, exactly `global_batch_indices`."""
    return [train_ids[j] for j in global_batch_indices(len(train_ids), global_batch, seed, step)]


def rank_micro_batches(
    indices: list[int], rank: int, world: int, micro_batch: int
) -> list[list[int]]:
    """This rank's contiguous share of a global batch, split into micro-batches."""
    share = len(indices) // world
    mine = indices[rank * share : (rank + 1) * share]
    return [mine[i : i + micro_batch] for i in range(0, len(mine), micro_batch)]


def collate(
    pairs: TokenizedPairs, indices: list[int], pad_id: int, max_length: int
) -> dict[str, torch.Tensor]:
    """Right-padded [2B, T] batch: rows 0..B-1 are chosen, B..2B-1 rejected.

    ``loss_mask`` is aligned with the shifted labels (position i scores token i+1)
    and is 1 exactly on response tokens. A pair longer than ``max_length`` is an
    error, never cut: the oracle judged the whole response.
    """
    seqs, prompt_lens = [], []
    for side in (pairs.chosen, pairs.rejected):
        for i in indices:
            seq = pairs.prompt[i] + side[i]
            if len(seq) > max_length or len(seq) == len(pairs.prompt[i]):
                raise ValueError(
                    f"pair {i}: {len(pairs.prompt[i])} prompt + {len(side[i])} response tokens "
                    f"do not fit learner.max_length = {max_length} (or the response is empty)"
                )
            seqs.append(seq)
            prompt_lens.append(len(pairs.prompt[i]))
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    loss_mask = torch.zeros((len(seqs), width - 1), dtype=torch.long)
    for row, (seq, p) in enumerate(zip(seqs, prompt_lens, strict=True)):
        ids[row, : len(seq)] = torch.tensor(seq)
        attn[row, : len(seq)] = 1
        loss_mask[row, max(p - 1, 0) : len(seq) - 1] = 1
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss_mask}


def forward_logps(model, batch: dict[str, torch.Tensor], normalize: bool) -> tuple:
    """(chosen, rejected) sequence log-probs of a collated batch under ``model``."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = sequence_logps(
        logits[:, :-1], batch["input_ids"][:, 1:], batch["loss_mask"], normalize=normalize
    )
    half = logps.shape[0] // 2
    return logps[:half], logps[half:]


#: Warmup steps however small warmup_ratio is: Adam's first steps, on moment estimates
#: from one batch, are the noisiest, and at the peak lr they overshoot.
MIN_WARMUP_STEPS = 3


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """ceil(total * ratio), at least MIN_WARMUP_STEPS (at most half of a short schedule)."""
    return max(math.ceil(total_steps * warmup_ratio), min(MIN_WARMUP_STEPS, total_steps // 2))


def cosine_lr_lambda(total_steps: int, warmup_ratio: float, min_ratio: float = 0.0):
    """Multiplier of the peak lr at each step: linear warmup, then cosine to min_ratio.

    Warmup step s runs at (s + 1) / (warmup + 1), so the first step is well below the peak
    and no warmup step reaches it (Hugging Face's cosine-with-warmup starts at 0, a step
    that moves nothing)."""
    warmup = warmup_steps(total_steps, warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def by_prompt(prompts: list[list[int]]) -> list[list[int]]:
    """Pair indices grouped by prompt, in order of first appearance."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(tuple(prompt), []).append(i)
    return list(groups.values())


def heldout_split(
    prompts: list[list[int]], fraction: float, seed: int, max_prompts: int | None = None
) -> tuple[list[int], list[int]]:
    """(training, held-out) pair indices, split by prompt: every pair of a prompt is on one
    side. round(fraction x distinct prompts) of them, at most ``max_prompts`` (at least one
    when fraction > 0, never all), are held out, a seeded sample of its own generator (no
    global RNG is drawn)."""
    groups = by_prompt(prompts)
    n = min(max(round(fraction * len(groups)), 1), len(groups) - 1) if fraction > 0 else 0
    n = min(n, max_prompts or n)
    held = set(random.Random(f"{seed}/heldout").sample(range(len(groups)), n))
    train = sorted(i for k, group in enumerate(groups) if k not in held for i in group)
    heldout = sorted(i for k in held for i in groups[k])
    return train, heldout


def objective_inputs(
    pairs: TokenizedPairs, cache: dict[str, torch.Tensor], ids: list[int], device=None
) -> tuple[dict[str, torch.Tensor], torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """What `inpo.algo.loss.objective` reads besides the policy's log-probs, for pairs
    ``ids``: every cached column (pi_ref, pi_t and MNPO's past iterates), the labels and
    each side's P(y > pi_t) (NaN where the pairs carry none)."""
    idx = torch.tensor(ids, dtype=torch.long)
    cols = {k: v[idx].to(device) for k, v in cache.items()}
    p_label = torch.tensor([pairs.p_label[i] for i in ids], dtype=torch.float64, device=device)
    wins = torch.tensor([pairs.p_win[i] for i in ids], dtype=torch.float64, device=device)
    return cols, p_label, (wins[:, 0], wins[:, 1])
