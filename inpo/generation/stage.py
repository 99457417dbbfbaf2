"""Stage: sample K responses per prompt from the current policy with vLLM.

Output rows (JSONL, one per prompt):
    {"prompt_id", "prompt", "responses", "finish_reasons", "logps",
     "prompt_ids", "response_ids"}
Every request is seeded from (run seed, purpose, prompt_id), so a prompt's
samples do not depend on batching or on which generator served it, and a
stage redone after a crash gives the same rows.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from tqdm import tqdm

from inpo.config import InpoConfig
from inpo.data import Prompt, load_prompts, prompt_token_ids
from inpo.durable import append_jsonl, finished_chunks
from inpo.errors import InpoError
from inpo.faults import NO_FAULTS, Faults
from inpo.generation.generator import GeneratorGroup, engine_settings
from inpo.models import model_signature, require_model_dir
from inpo.plan.cluster import start_ray
from inpo.plan.placement import plan_for
from inpo.plan.pool import start_or_reuse, stop
from inpo.rows import GenerationRow, write_rows
from inpo.stages import Role


def request_seed(run_seed: int, purpose: str, prompt_id: int) -> int:
    digest = hashlib.sha256(f"{run_seed}/{purpose}/{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def tokenize_prompts(
    tokenizer, prompts: list[Prompt], max_tokens: int, source: str
) -> tuple[list[int], list[list[int]]]:
    """(indices kept, their token ids); prompts longer than max_tokens are left out, and
    none left is an error naming ``source``."""
    kept, ids = [], []
    for i, p in enumerate(prompts):
        t = prompt_token_ids(tokenizer, p)
        if len(t) <= max_tokens:
            kept.append(i)
            ids.append(t)
    if not kept:
        raise InpoError(
            f"{source}: all {len(prompts)} prompts are longer than data.max_prompt_tokens = "
            f"{max_tokens}"
        )
    return kept, ids


def generate_rows(
    generators,
    prompts: list[Prompt],
    prompt_ids: list[int],
    token_ids: list[list[int]],
    *,
    seeds: list[int],
    n: int,
    temperature: float,
    top_p: float,
    max_tokens: int,
    chunk_prompts: int = 256,
    desc: str = "generate",
    partial: Path | None = None,
    faults: Faults = NO_FAULTS,
) -> list[GenerationRow]:
    """The rows, generated chunk_prompts per generator at a time; with ``partial``, each
    finished chunk is appended to it durably and the rows it already holds for these
    prompts (a stage interrupted before) are kept, not generated again."""
    rows = finished_chunks(partial, prompt_ids)
    chunk = chunk_prompts * len(generators.actors)
    bar = tqdm(total=len(prompts), initial=len(rows), desc=desc, unit="prompt", dynamic_ncols=True)
    t0, n_tokens = time.perf_counter(), 0
    with bar:  # closed on a failure too, so the run's error line is the last printed
        for start in range(len(rows), len(prompts), chunk):
            sl = slice(start, start + chunk)
            out = generators.generate(
                token_ids[sl],
                seeds[sl],
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_tokens,
            )
            done = []
            for pid, prompt, ids, samples in zip(
                prompt_ids[sl], prompts[sl], token_ids[sl], out, strict=True
            ):
                n_tokens += sum(len(s["token_ids"]) for s in samples)
                done.append(
                    {
                        "prompt_id": pid,
                        "prompt": prompt,
                        "responses": [s["text"] for s in samples],
                        "finish_reasons": [s["finish_reason"] for s in samples],
                        "logps": [s["logp"] for s in samples],
                        "prompt_ids": ids,
                        "response_ids": [s["token_ids"] for s in samples],
                    }
                )
            if partial:
                append_jsonl(partial, done)
            rows += done
            bar.update(len(out))
            bar.set_postfix(tok_s=f"{n_tokens / (time.perf_counter() - t0):.0f}")
            faults.point("generate.chunk")
    return rows


def sample(
    generators,
    cfg: InpoConfig,
    tokenizer,
    prompts: list[Prompt],
    prompt_ids: list[int],
    purpose: str,
    n: int,
    temperature: float,
    max_tokens: int,
    partial: Path | None = None,
    faults: Faults = NO_FAULTS,
) -> list[GenerationRow]:
    """`generate_rows` for the prompts within data.max_prompt_tokens, each sampled with a
    seed of (run.seed, ``purpose``, its prompt id): a redone stage samples the same."""
    kept, token_ids = tokenize_prompts(
        tokenizer, prompts, cfg.data.max_prompt_tokens, source=f"{purpose} prompts"
    )
    ids = [prompt_ids[i] for i in kept]
    return generate_rows(
        generators,
        [prompts[i] for i in kept],
        ids,
        token_ids,
        seeds=[request_seed(cfg.run.seed, purpose, p) for p in ids],
        n=n,
        temperature=temperature,
        top_p=cfg.generation.top_p,
        max_tokens=max_tokens,
        chunk_prompts=cfg.generation.chunk_prompts,
        desc=purpose,
        partial=partial,
        faults=faults,
    )


def start_generators(
    cfg: InpoConfig, device: str, model_dir: str, slots=None, probe_len: int = 0
) -> GeneratorGroup:
    """Generators of ``model_dir``, or those of an earlier run with the same engine
    settings and a model of the same config and tokenizer, reloaded from ``model_dir``
    (`inpo.plan.pool`); end with `inpo.plan.pool.stop`."""
    if slots is None:
        slots = plan_for(cfg, device, [Role.GENERATOR]).slots[Role.GENERATOR]
    settings = engine_settings(model_dir, cfg, device, slots, probe_len)
    # the weights are reloaded: what the engine is built from besides them is the key
    key = (model_signature(model_dir), device, *sorted((k, str(v)) for k, v in settings.items()))

    def reuse(group: GeneratorGroup) -> None:
        group.configure(cfg)
        group.call("reload", model_dir)

    return start_or_reuse(
        Role.GENERATOR,
        key,
        slots,
        lambda: GeneratorGroup(model_dir, cfg, device, slots, probe_len, settings),
        reuse,
    )


def generate_file(cfg: InpoConfig, prompts_path: Path, out: Path) -> None:
    """`inpo generate`: K samples for every prompt of a file."""
    from transformers import AutoTokenizer

    prompts = load_prompts(prompts_path, cfg.data.prompt_field)
    policy = str(require_model_dir(cfg.model.policy, "model.policy"))
    tokenizer = AutoTokenizer.from_pretrained(policy)
    # before Ray and vLLM start: a file of prompts all over the budget is an error now
    kept, _ = tokenize_prompts(
        tokenizer, prompts, cfg.data.max_prompt_tokens, source=str(prompts_path)
    )
    generators = start_generators(cfg, start_ray(cfg), policy)
    try:
        gen = cfg.generation
        ids = list(range(len(prompts)))
        rows = sample(
            generators,
            cfg,
            tokenizer,
            prompts,
            ids,
            "generate",
            gen.num_samples,
            gen.temperature,
            gen.max_new_tokens,
        )
    finally:
        stop(generators)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_rows(out, rows)
    skipped = len(prompts) - len(kept)
    print(
        f"wrote {len(rows)} prompts x {cfg.generation.num_samples} responses to {out}"
        + (f"; skipped {skipped} prompts over data.max_prompt_tokens" if skipped else "")
    )
