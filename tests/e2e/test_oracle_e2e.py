"""Model oracles on tiny offline models: pairpm and reward in process and as Ray actors, and
the http backend against a real local vLLM OpenAI-compatible server."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import openai_server

from inpo.config import InpoConfig
from inpo.judging.actor import OracleGroup
from inpo.judging.build import build_oracle
from inpo.judging.http import HttpJudge
from inpo.judging.oracle import Debiased, OracleError
from inpo.judging.pairpm import PairPM, render_context
from inpo.judging.reward import RewardModel
from inpo.judging.verdict import BUILTIN_TEMPLATES, render_prompt

pytestmark = pytest.mark.e2e


def pairwise_prompt(prompt, a: str, b: str) -> str:
    return render_prompt(BUILTIN_TEMPLATES["pairwise"], prompt, a, b)


CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a fruit."},
]
PROMPTS = [CHAT, "Write a word:", CHAT, "Count to three.", "x"]
A = ["apple", "banana split", "", "one two three", "yes"]
B = ["a pear, I think", "no", "kiwi", "1 2 3", "yes"]


def oracle_cfg(**fields) -> InpoConfig:
    return InpoConfig.model_validate({"oracle": fields})


def reference_p_a(model_dir: Path, texts: list[str]) -> list[float]:
    """Plain HF, one text at a time: softmax over the next-token logits of "A" and "B"."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    choices = tok.convert_tokens_to_ids(["A", "B"])
    out = []
    for text in texts:
        ids = torch.tensor([tok(text, add_special_tokens=False).input_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1, choices]
        out.append(logits.softmax(-1)[0].item())
    return out


# --- pairpm -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pairpm(tiny_model) -> PairPM:
    return PairPM(str(tiny_model), "cpu", batch_size=2, max_length=2048)


def test_pairpm_format_and_batching(pairpm, tiny_model):
    context = render_context(CHAT)
    assert context == "\n\n<turn> user\n Name a fruit.\n"  # RLHFlow's: no system turn
    # the exact text the judge reads, through the tiny model's ChatML template with no
    # generation prompt (RLHFlow reads the logits after the closed user turn)
    text = (
        f"<|im_start|>user\n[CONTEXT] {context} [RESPONSE A] apple [RESPONSE B] "
        "a pear, I think \n<|im_end|>\n"
    )
    assert pairpm.tok.decode(pairpm.fitted_ids(CHAT, A[0], B[0])) == text
    batched = pairpm.prob(PROMPTS, A, B)  # batches of 2, left padded
    alone = [pairpm.prob([p], [a], [b])[0] for p, a, b in zip(PROMPTS, A, B, strict=True)]
    assert batched == pytest.approx(alone, abs=1e-5)
    texts = [pairpm.tok.decode(pairpm.fitted_ids(*t)) for t in zip(PROMPTS, A, B, strict=True)]
    assert texts[0] == text
    assert batched == pytest.approx(reference_p_a(tiny_model, texts), abs=1e-5)
    assert pairpm.truncated() == 0


def test_pairpm_keeps_the_question_and_cuts_the_responses(pairpm, monkeypatch):
    monkeypatch.setattr(pairpm, "max_length", 200)
    monkeypatch.setattr(pairpm, "n_truncated", 0)
    question = "A long question, " * 4 + "or is it?"
    frame = len(pairpm.judge_ids(render_context(question), "", ""))
    ids = pairpm.fitted_ids(question, "x" * 300, "short answer")
    assert len(ids) == 200  # the char tokenizer cuts to the exact limit
    text = pairpm.tok.decode(ids)
    assert f"[CONTEXT] {render_context(question)} [RESPONSE A] xxx" in text  # question whole
    assert text.count("x") == 200 - frame - len("short answer")
    assert " [RESPONSE B] short answer \n<|im_end|>\n" in text  # the short one whole
    ids = pairpm.fitted_ids(question, "x" * 300, "y" * 300)  # both long: cut alike
    text = pairpm.tok.decode(ids)
    assert len(ids) <= 200 and text.count("x") == text.count("y") == (200 - frame) // 2
    assert pairpm.truncated() == 2
    pairpm.fitted_ids(question, "a", "b")  # fits: not counted
    assert pairpm.truncated() == 2
    with pytest.raises(
        OracleError, match=r"oracle.max_length = 200: .* \(the question is never cut\)"
    ):
        pairpm.fitted_ids("why? " * 60, "a", "b")


def test_pairpm_in_ray_actors_debiased(ray_session, tiny_model, pairpm):
    cfg = oracle_cfg(backend="pairpm", model=str(tiny_model), num_actors=2, batch_size=1)
    oracle = build_oracle(cfg, "cpu")
    try:
        assert isinstance(oracle, Debiased) and isinstance(oracle.inner, OracleGroup)
        assert not oracle.has_scores
        raw = oracle.inner.prob(PROMPTS, A, B)  # split 3 + 2 over the actors, in order
        assert raw == pytest.approx(pairpm.prob(PROMPTS, A, B), abs=1e-5)
        # debiased = the mean of P(A > B) and 1 - P(B > A), each judged by the in-process
        # judge: the actors kept the order of both halves of the doubled batch
        flipped = pairpm.prob(PROMPTS, B, A)
        want = [(x + 1 - y) / 2 for x, y in zip(raw, flipped, strict=True)]
        assert oracle.prob(PROMPTS, A, B) == pytest.approx(want, abs=1e-5)
        assert abs(raw[0] - (1 - flipped[0])) > 1e-4  # the judge does have a slot bias
        assert oracle.prob([], [], []) == []
        assert oracle.truncated() == 0
        oracle.prob(PROMPTS, ["x" * 2100] * len(PROMPTS), B)  # over max_length 2048
        assert oracle.truncated() == 2 * len(PROMPTS)  # both orders, summed over actors
    finally:
        oracle.close()


# --- reward -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_reward_model(tmp_path_factory) -> Path:
    from inpo.models.tiny import build_tiny_reward_model

    return build_tiny_reward_model(tmp_path_factory.mktemp("models") / "tiny_rm", seed=3)


def test_reward_scores_and_batching(tiny_reward_model):
    rm = RewardModel(str(tiny_reward_model), "cpu", batch_size=2, max_length=512)
    ids = rm.input_ids(CHAT, "apple")
    assert rm.tok.decode(ids) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a fruit.<|im_end|>\n"
        "<|im_start|>assistant\napple<|im_end|>\n"
    )
    assert rm.tok.decode(rm.input_ids("Write a word:", " pear")) == "Write a word: pear"
    batched = rm.scores(PROMPTS, A)
    alone = [rm.scores([p], [a])[0] for p, a in zip(PROMPTS, A, strict=True)]
    assert batched == pytest.approx(alone, abs=1e-5)
    short = RewardModel(str(tiny_reward_model), "cpu", batch_size=2, max_length=8)
    assert short.tok.decode(short.input_ids("a long prompt", " reply")) == "pt reply"


def test_reward_is_read_at_the_last_token_when_pad_is_the_end_of_turn(tmp_path):
    """A reward model without a pad token (pad := EOS) whose template closes the turn with
    EOS, as Llama 3's <|eot_id|>: the reward is the head at that closing token."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from inpo.models.tiny import build_tiny_reward_model

    model_dir = build_tiny_reward_model(tmp_path / "rm", seed=4)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = None
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>"
        "{% endfor %}"
    )
    tok.save_pretrained(model_dir)
    rm = RewardModel(str(model_dir), "cpu", batch_size=3, max_length=512)
    assert rm.tok.pad_token_id == rm.tok.eos_token_id
    prompts = [CHAT, [{"role": "user", "content": "Hi"}], CHAT]
    responses = ["apple", "a pear, I think", ""]
    # plain transformers, one sequence at a time: the score head at the last position
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    want = []
    for p, r in zip(prompts, responses, strict=True):
        ids = rm.input_ids(p, r)
        assert ids[-1] == rm.tok.eos_token_id
        with torch.no_grad():
            hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state
            want.append(model.score(hidden[0, -1]).item())
    assert rm.scores(prompts, responses) == pytest.approx(want, abs=1e-5)


def test_reward_in_ray_actor(ray_session, tiny_reward_model):
    cfg = oracle_cfg(backend="reward", model=str(tiny_reward_model), batch_size=3)
    oracle = build_oracle(cfg, "cpu")
    try:
        assert isinstance(oracle, OracleGroup) and oracle.has_scores  # symmetric: no Debiased
        ra, rb = oracle.scores(PROMPTS, A), oracle.scores(PROMPTS, B)
        expected = torch.sigmoid(torch.tensor(ra) - torch.tensor(rb)).tolist()
        assert oracle.prob(PROMPTS, A, B) == pytest.approx(expected, abs=1e-5)
        in_process = RewardModel(str(tiny_reward_model), "cpu", batch_size=2, max_length=2048)
        assert ra == pytest.approx(in_process.scores(PROMPTS, A), abs=1e-5)
    finally:
        oracle.close()


def test_model_oracle_errors_come_back_clean(ray_session, tiny_model, tmp_path):
    # a causal LM is no reward model: its classifier config has 2 labels
    cfg = oracle_cfg(backend="reward", model=str(tiny_model))
    with pytest.raises(OracleError, match=f"oracle.model = {tiny_model}: a reward model has one"):
        build_oracle(cfg, "cpu")
    missing = tmp_path / "nothing_here"
    with pytest.raises(OracleError, match=f"oracle.model = {missing}: no such directory"):
        PairPM(str(missing), "cpu", batch_size=1, max_length=64)


# --- the vLLM engine against the Hugging Face one ------------------------------------------


def test_vllm_judges_agree_with_hf(tiny_model, tiny_reward_model):
    for cls, model in ((PairPM, tiny_model), (RewardModel, tiny_reward_model)):
        on = {e: cls(str(model), "cpu", 2, 2048, engine=e) for e in ("vllm", "hf")}
        assert on["vllm"].engine == "vllm" and on["hf"].engine == "hf"
        p = {e: j.prob(PROMPTS, A, B) for e, j in on.items()}
        assert p["vllm"] == pytest.approx(p["hf"], abs=1e-5), cls.__name__
        del on


def test_engine_choice_for_an_architecture_vllm_lacks(tiny_reward_model, tmp_path, capsys):
    import json
    import shutil

    from inpo.judging.model_judge import choose_engine

    model = shutil.copytree(tiny_reward_model, tmp_path / "rm")
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["NoSuchForSequenceClassification"]
    (model / "config.json").write_text(json.dumps(config))
    assert choose_engine(None, str(model), reward=True) == "hf"
    assert "no pooling model for architecture NoSuchForSequenceClassification" in (
        capsys.readouterr().out
    )
    with pytest.raises(OracleError, match="oracle.engine = vllm: vLLM has no pooling model"):
        choose_engine("vllm", str(model), reward=True)
    assert choose_engine("hf", str(model), reward=True) == "hf"
    assert choose_engine(None, str(tiny_reward_model), reward=True) == "vllm"


# --- http against a real vLLM server ------------------------------------------------------


@pytest.fixture(scope="module")
def judge_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model edited so that "A" and "B" always top its next-token distribution
    (a random model rarely puts both in the top 20): the final norm keeps one hidden
    dimension, which every embedding holds at +10, and only "A" and "B" read it strongly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        model.model.embed_tokens.weight[:, 0] = 10.0
        model.lm_head.weight[tok.convert_tokens_to_ids("A"), 0] = 0.5
        model.lm_head.weight[tok.convert_tokens_to_ids("B"), 0] = 0.45
    out = tmp_path_factory.mktemp("models") / "judge"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def vllm_server(judge_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with openai_server(judge_model, log, "--gpu-memory-utilization", "0.1") as url:
        yield url


def test_http_judge_against_vllm(vllm_server, judge_model):
    oracle = build_oracle(oracle_cfg(backend="http", url=vllm_server, batch_size=4), "cpu")
    try:
        assert isinstance(oracle, Debiased) and isinstance(oracle.inner, HttpJudge)
        judge = oracle.inner
        assert judge.model == str(judge_model)  # the first (only) served model
        raw = judge.prob(PROMPTS, A, B)
        texts = [pairwise_prompt(*t) for t in zip(PROMPTS, A, B, strict=True)]
        assert raw == pytest.approx(reference_p_a(judge_model, texts), abs=1e-3)
        assert all(0.5 < p < 0.75 for p in raw)  # the edited model leans to "A"
        flipped = reference_p_a(
            judge_model, [pairwise_prompt(*t) for t in zip(PROMPTS, B, A, strict=True)]
        )
        want = [(x + 1 - y) / 2 for x, y in zip(raw, flipped, strict=True)]
        assert oracle.prob(PROMPTS, A, B) == pytest.approx(want, abs=1e-3)
    finally:
        oracle.close()
