"""Oracle backends without models: synthetic preferences, debiasing, the python and http
backends (against a dead port and a fake local server)."""

from __future__ import annotations

import itertools
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import refused_port

import inpo.judging.http as http_oracle
from inpo.config import InpoConfig
from inpo.judging.build import build_oracle
from inpo.judging.http import HttpJudge
from inpo.judging.oracle import Debiased, Oracle, OracleError, ParseCounts, check_probs
from inpo.judging.synthetic import (
    RPS_NASH,
    rps_class,
    rps_distribution,
    rps_nash_distance,
    rps_prob,
    vowel_score,
)
from inpo.judging.verdict import BUILTIN_TEMPLATES, render_prompt, verdict_seed

TEXTS = ["", "xyz", "hello world", "aeiou", "banana", "a" * 16, "quick brown fox jumps", "e"]
CHAT = [{"role": "user", "content": "Say something."}]


def pairwise_prompt(prompt, a: str, b: str) -> str:
    return render_prompt(BUILTIN_TEMPLATES["pairwise"], prompt, a, b)


def oracle_for(**fields) -> Oracle:
    return build_oracle(InpoConfig.model_validate({"oracle": fields}), "cpu")


# --- synthetic ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vowels", "length"])
def test_transitive_synthetic_agrees_with_its_scores(kind):
    oracle = oracle_for(backend="synthetic", synthetic=kind)
    assert oracle.has_scores and not isinstance(oracle, Debiased)
    scores = dict(zip(TEXTS, oracle.scores(["p"] * len(TEXTS), TEXTS), strict=True))
    pairs = list(itertools.permutations(TEXTS, 2))
    probs = oracle.prob(["p"] * len(pairs), [a for a, _ in pairs], [b for _, b in pairs])
    p = dict(zip(pairs, probs, strict=True))
    for a, b in pairs:
        assert p[a, b] + p[b, a] == pytest.approx(1.0, abs=1e-12)
        assert (p[a, b] > 0.5) == (scores[a] > scores[b])
    for a, b, c in itertools.permutations(TEXTS, 3):  # transitive: no cycle
        if p[a, b] > 0.5 and p[b, c] > 0.5:
            assert p[a, c] > 0.5


def test_vowel_and_length_scores():
    assert vowel_score("") == 0.0
    assert vowel_score("aXbE") == 0.5
    length = oracle_for(backend="synthetic", synthetic="length")
    assert length.scores([""] * 3, ["x" * 16, "x" * 8, ""]) == [0.0, -0.5, -1.0]
    # sharpness 4, vowel scale 10: a 0.05 lead in vowel share gives sigmoid(2)
    vowels = oracle_for(backend="synthetic", synthetic="vowels")
    [p] = vowels.prob(["p"], ["a" + "x" * 19], ["x" * 20])
    assert p == pytest.approx(1 / (1 + math.exp(-2.0)))


def test_rps_is_a_cycle_with_a_uniform_equilibrium():
    assert [rps_class(t) for t in ["apple", "  banana", "cherry", "dog", "Zebra", "", "7"]] == [
        "rock",
        "paper",
        "scissors",
        "rock",
        "none",
        "none",
        "none",
    ]
    oracle = oracle_for(backend="synthetic", synthetic="rps")
    assert not oracle.has_scores
    with pytest.raises(OracleError, match="no pointwise scores"):
        oracle.scores(["p"], ["a"])
    rock, paper, scissors = "a", "b", "c"
    # paper > rock, scissors > paper, rock > scissors: a cycle
    assert oracle.prob(["p"] * 3, [paper, scissors, rock], [rock, paper, scissors]) == [1.0] * 3
    assert oracle.prob(["p"] * 3, [rock, paper, scissors], [paper, scissors, rock]) == [0.0] * 3
    assert oracle.prob(["p"] * 2, ["apple", "Upper"], ["dog", ""]) == [0.5, 0.5]
    assert oracle.prob(["p"] * 3, ["X", "X", "X"], [rock, paper, scissors]) == [0.0] * 3
    # Nash: against the uniform mix every class wins half the time, "none" never wins
    example = {"rock": "a", "paper": "b", "scissors": "c", "none": "X"}
    assert {c: rps_class(t) for c, t in example.items()} == {c: c for c in example}
    for c, text in example.items():
        value = sum(share * rps_prob(text, example[d]) for d, share in RPS_NASH.items())
        assert value == pytest.approx(0.0 if c == "none" else 0.5)
    assert rps_nash_distance(["a", "b", "c"]) == pytest.approx(0.0)
    assert rps_nash_distance(["X", ""]) == pytest.approx(1.0)
    assert rps_nash_distance(["a", "d"]) == pytest.approx(2 / 3)
    assert rps_distribution(["a", "b", "X", "g"]) == {
        "rock": 0.5,
        "paper": 0.25,
        "scissors": 0.0,
        "none": 0.25,
    }


# --- debiasing and validation -------------------------------------------------------------


class SlotABiased(Oracle):
    """A judge that adds 0.2 to whatever sits in slot A."""

    position_biased = True

    def prob(self, prompts, a, b):
        return [0.5 + 0.3 * math.tanh(len(x) - len(y)) / 2 + 0.2 for x, y in zip(a, b, strict=True)]


def test_debiased_removes_a_constant_slot_bias_exactly():
    a, b = ["long answer", "x", "same"], ["short", "much longer", "four"]
    raw = SlotABiased().prob(["p"] * 3, a, b)
    fair = Debiased(SlotABiased())
    ab, ba = fair.prob(["p"] * 3, a, b), fair.prob(["p"] * 3, b, a)
    for i in range(3):
        assert ab[i] == pytest.approx(raw[i] - 0.2, abs=1e-12)  # the bias is gone
        assert ba[i] == pytest.approx(1.0 - raw[i] + 0.2, abs=1e-12)
    assert raw[2] == pytest.approx(0.7) and ab[2] == pytest.approx(0.5)


def test_check_probs_errors():
    assert check_probs((0, 0.5, 1), 3, "x") == [0.0, 0.5, 1.0]
    with pytest.raises(OracleError, match="returned 2 probabilities for 3 pairs"):
        check_probs([0.1, 0.2], 3, "x")
    with pytest.raises(OracleError, match="P\\(a > b\\) = 1.5 for pair 1"):
        check_probs([0.1, 1.5], 2, "x")
    with pytest.raises(OracleError, match="nan"):
        check_probs([float("nan")], 1, "x")
    with pytest.raises(OracleError, match="not a sequence of numbers"):
        check_probs(["high"], 1, "x")
    with pytest.raises(OracleError, match="not a sequence of numbers"):
        check_probs(None, 1, "x")


# --- python backend (the callables it imports by name live here) ------------------------

CALLS: list[tuple] = []
NOT_CALLABLE = 42


def longer_wins(prompts, a, b):
    CALLS.append((prompts, a, b))
    return [0.9 if len(x) > len(y) else 0.1 for x, y in zip(a, b, strict=True)]


def too_few(prompts, a, b):
    return [0.5]


def out_of_range(prompts, a, b):
    return [2.0] * len(a)


def raising(prompts, a, b):
    raise RuntimeError("judge exploded")


def test_python_backend_calls_the_function_with_lists():
    CALLS.clear()
    oracle = oracle_for(backend="python", callable="test_oracle:longer_wins", debias=False)
    prompts = [CHAT, "plain prompt"]
    assert oracle.prob(prompts, ("long one", "a"), ("b", "long two")) == [0.9, 0.1]
    assert CALLS == [(prompts, ["long one", "a"], ["b", "long two"])]
    # with debias it is asked once, in both orders, and the answers are averaged
    debiased = oracle_for(backend="python", callable="test_oracle:longer_wins")
    assert isinstance(debiased, Debiased)
    assert debiased.prob(["p"], ["long one"], ["b"]) == [pytest.approx(0.9)]
    assert CALLS[-1] == (["p", "p"], ["long one", "b"], ["b", "long one"])


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("too_few", "test_oracle:too_few returned 1 probabilities for 2 pairs"),
        ("out_of_range", "test_oracle:out_of_range returned P\\(a > b\\) = 2.0"),
        ("raising", "test_oracle:raising raised RuntimeError\\('judge exploded'\\)"),
    ],
)
def test_python_backend_rejects_bad_answers(name, match):
    oracle = oracle_for(backend="python", callable=f"test_oracle:{name}", debias=False)
    with pytest.raises(OracleError, match=match):
        oracle.prob(["p", "q"], ["a", "b"], ["c", "d"])


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("no_such_module_xyz:judge", "cannot import no_such_module_xyz: ModuleNotFoundError"),
        ("test_oracle:missing", "test_oracle has no attribute missing"),
        ("test_oracle:NOT_CALLABLE", "NOT_CALLABLE is a int, not callable"),
        ("test_oracle", "expected the form 'package.module:function'"),
    ],
)
def test_python_backend_bad_callable(spec, match):
    with pytest.raises(OracleError, match=f"oracle.callable = '{spec}': {match}"):
        oracle_for(backend="python", callable=spec)


# --- http backend -------------------------------------------------------------------------


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(http_oracle, "BACKOFF_S", 0.01)


def test_http_dead_port_is_a_clear_error(fast_backoff):
    with refused_port() as port, pytest.raises(OracleError) as err:
        oracle_for(backend="http", url=f"http://127.0.0.1:{port}", retries=2, timeout_s=2)
    assert str(err.value) == (
        f"cannot reach http://127.0.0.1:{port}/v1 after 3 tries: connection refused"
    )


class FakeServer:
    """An OpenAI-compatible stand-in: answers[path] is a list of (status, body) served in
    turn (the last one repeats); every request is recorded."""

    def __init__(self):
        self.answers: dict[str, list[tuple[int, str]]] = {}
        self.requests: list[tuple[str, dict, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                size = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(size)) if size else {}
                fake.requests.append((self.path, body, dict(self.headers)))
                queue = fake.answers[self.path]
                status, text = queue.pop(0) if len(queue) > 1 else queue[0]
                self.send_response(status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text.encode())

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reply(self, path: str, *answers: tuple[int, object]) -> None:
        self.answers[path] = [(s, b if isinstance(b, str) else json.dumps(b)) for s, b in answers]
        self.requests.clear()


@pytest.fixture(scope="module")
def fake_server():
    server = FakeServer()
    yield server
    server.server.shutdown()


def top(**logprobs: float) -> dict:
    return {"choices": [{"text": "A", "logprobs": {"top_logprobs": [logprobs]}}]}


MODELS = (200, {"object": "list", "data": [{"id": "judge-7b", "object": "model"}]})


def test_http_reads_p_a_from_top_logprobs(fake_server, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sekret")
    fake_server.reply("/v1/models", MODELS)
    answer = top(**{" A": math.log(0.3), "B": math.log(0.1), "x": math.log(0.5)})
    fake_server.reply("/v1/completions", (200, answer))
    oracle = oracle_for(backend="http", url=fake_server.url, api_key_env="JUDGE_KEY", debias=False)
    assert oracle.model == "judge-7b"
    assert oracle.prob([CHAT, "hi"], ["yes", "no"], ["no", "yes"]) == [
        pytest.approx(0.75),
        pytest.approx(0.75),
    ]
    path, body, headers = fake_server.requests[-1]
    assert path == "/v1/completions" and headers["Authorization"] == "Bearer sekret"
    assert body["model"] == "judge-7b" and body["max_tokens"] == 1 and body["logprobs"] == 20
    assert body["prompt"] in (
        pairwise_prompt(CHAT, "yes", "no"),
        pairwise_prompt("hi", "no", "yes"),
    )
    assert "[RESPONSE A] yes\n[RESPONSE B] no" in pairwise_prompt(CHAT, "yes", "no")
    assert oracle.verdict_mass() == pytest.approx(0.4)  # "x" is not a verdict
    oracle.close()


def test_http_only_one_letter_or_neither(fake_server):
    oracle = HttpJudge(fake_server.url, "m")
    fake_server.reply("/v1/completions", (200, top(B=-0.1, C=-3.0)))
    assert oracle.prob(["p"], ["a"], ["b"]) == [0.0]
    fake_server.reply("/v1/completions", (200, top(C=-0.1, D=-3.0)))
    with pytest.raises(OracleError, match=r"none of \[.A., .B.\] is among the judge.s top"):
        oracle.prob(["p"], ["a"], ["b"])


def test_http_retries_server_errors_then_succeeds(fake_server, fast_backoff):
    oracle = HttpJudge(fake_server.url, "m", retries=2)
    fake_server.reply("/v1/completions", (503, "busy"), (500, "oops"), (200, top(A=-1.0, B=-1.0)))
    assert oracle.prob(["p"], ["a"], ["b"]) == [0.5]
    assert len(fake_server.requests) == 3
    fake_server.reply("/v1/completions", (503, "busy"))
    with pytest.raises(OracleError, match=r"after 3 tries: HTTP 503 'busy'"):
        oracle.prob(["p"], ["a"], ["b"])


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        ((200, "<html>not json</html>"), "/v1/completions answered non-JSON: '<html>"),
        ((200, {"choices": []}), "no choices\\[0\\].logprobs.top_logprobs"),
        ((200, top(A="high")), "no choices\\[0\\].logprobs.top_logprobs"),
        ((404, "model m not found"), "answered HTTP 404: 'model m not found'"),
    ],
)
def test_http_garbage_is_a_clear_error(fake_server, answer, match):
    fake_server.reply("/v1/completions", answer)
    with pytest.raises(OracleError, match=match):
        HttpJudge(fake_server.url, "m").prob(["p"], ["a"], ["b"])


def test_http_model_list_garbage(fake_server):
    fake_server.reply("/v1/models", (200, {"data": []}))
    with pytest.raises(OracleError, match="not a model list \\(set oracle.http_model\\)"):
        HttpJudge(fake_server.url)


def test_http_reasoning_mode_samples_seeded_verdicts_and_reads_them(fake_server):
    fake_server.reply("/v1/models", MODELS)
    texts = ["A is right. [[A>B]]", "B is vague, A exact: [[A>>B]]", "Let me think about"]
    answer = {
        "choices": [
            {"index": i, "text": t, "finish_reason": "length" if i == 2 else "stop"}
            for i, t in reversed(list(enumerate(texts)))  # served out of order
        ]
    }
    fake_server.reply("/v1/completions", (200, answer))
    cfg = InpoConfig.model_validate(
        {
            "oracle": {
                "backend": "http",
                "url": fake_server.url,
                "reasoning_tokens": 48,
                "verdict_samples": 3,
                "max_unparseable_fraction": 0.4,
            },
            "run": {"seed": 5},
        }
    )
    oracle = build_oracle(cfg, "cpu", keep_texts=True)
    # each order reads (0.75 + 1.0) / 2 from the same canned answer; debiased: the mean
    # of 0.875 and 1 - 0.875
    assert oracle.prob(["Why?"], ["yes"], ["no"]) == [pytest.approx(0.5)]
    bodies = [b for path, b, _ in fake_server.requests if path == "/v1/completions"]
    assert {b["seed"] for b in bodies} == {
        verdict_seed(5, "Why?", "yes", "no"),
        verdict_seed(5, "Why?", "no", "yes"),
    }
    assert all(b["n"] == 3 and b["max_tokens"] == 48 and b["temperature"] == 1.0 for b in bodies)
    assert "[[A>>B]] if A is much better" in bodies[0]["prompt"]  # builtin:reasoned
    assert oracle.parse_counts() == ParseCounts(samples=6, unparsed=2, cut=2, empty=0)
    kept = oracle.judgements()
    assert [k["texts"] for k in kept] == [texts, texts]
    assert {(k["a"], k["seed"]) for k in kept} == {
        ("yes", verdict_seed(5, "Why?", "yes", "no")),
        ("no", verdict_seed(5, "Why?", "no", "yes")),
    }
    oracle.close()


def test_inpo_judge_reports_unparseable_verdicts_and_writes_the_texts(
    fake_server, tmp_path, capsys
):
    from inpo.judging.stage import judge_file

    fake_server.reply("/v1/models", MODELS)
    texts = ["Both answer; A is exact. [[A>>B]]", "I would say that"]
    answer = {
        "choices": [
            {"index": i, "text": t, "finish_reason": r}
            for i, (t, r) in enumerate(zip(texts, ["stop", "length"], strict=True))
        ]
    }
    fake_server.reply("/v1/completions", (200, answer))
    gen = tmp_path / "generations.jsonl"
    gen.write_text(json.dumps({"prompt_id": 0, "prompt": "Why?", "responses": ["a", "b"]}) + "\n")
    cfg = InpoConfig.model_validate(
        {
            "oracle": {
                "backend": "http",
                "url": fake_server.url,
                "reasoning_tokens": 16,
                "verdict_samples": 2,
                "max_unparseable_fraction": 0.5,
            },
            "pairing": {"strategy": "random"},
        }
    )
    judge_file(cfg, gen, tmp_path / "pairs.jsonl")
    said = capsys.readouterr().out
    # one comparison, both orders: 4 samples, the 2 "I would say that" cut and unparseable
    assert "share of samples with a verdict 0.500" in said
    assert (
        "2 of 4 sampled verdicts unparseable (2 cut at oracle.reasoning_tokens), 0 queries" in said
    )
    summary = json.loads((tmp_path / "pairs_summary.json").read_text())
    assert summary["verdict_samples"] == 4 and summary["unparsed_verdicts"] == 2
    assert summary["unparsed_cut"] == 2 and summary["no_verdict"] == 0
    kept = [json.loads(x) for x in (tmp_path / "pairs_verdicts.jsonl").read_text().splitlines()]
    assert [k["values"] for k in kept] == [[1.0, None], [1.0, None]]
    assert {(k["a"], k["b"]) for k in kept} == {("a", "b"), ("b", "a")}
