"""Fault handling without Ray: the restart policy, faults.jsonl, kill points and the
generate stage's durable chunks."""

from __future__ import annotations

import json

import pytest

from inpo.config import InpoConfig
from inpo.durable import append_jsonl, read_jsonl_prefix
from inpo.errors import ActorError
from inpo.faults import Faults
from inpo.generation.stage import generate_rows
from inpo.run.fleet import Fleet
from inpo.stages import Role


def fleet(tmp_path, **run) -> Fleet:
    cfg = InpoConfig.model_validate({"run": {"dir": str(tmp_path), **run}})
    return Fleet(cfg, tmp_path, "cpu", ([1, 2], 1), Faults())


def rows_of(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_failure_is_restarted_once_and_stops_the_second_time(tmp_path, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    f = fleet(tmp_path)
    killed = []
    monkeypatch.setattr("ray.kill", killed.append)
    f.groups[Role.GENERATOR] = type("Group", (), {"actors": ["generator 0 handle"]})()
    dead = ActorError("generator 0 died: SIGKILL", "generator 0", died=True)
    assert f.recover(dead, 2, "generate", 1.5) == "generator"
    assert f.generators is None and killed == ["generator 0 handle"] and f.restarts == 1
    with pytest.raises(ActorError, match="generator 0 died"):
        f.recover(dead, 2, "generate", 0.25)  # the same failure in the same stage
    assert [
        (r["iteration"], r["stage"], r["actor"], r["action"], r["seconds_lost"])
        for r in rows_of(tmp_path / "faults.jsonl")
    ] == [
        (2, "generate", "generator 0", "restarted", 1.5),
        (2, "generate", "generator 0", "stopped", 0.25),
    ]
    assert rows_of(tmp_path / "faults.jsonl")[0]["time"].endswith("+00:00")  # ISO 8601, UTC


def test_restarts_are_bounded_by_run_max_restarts(tmp_path, monkeypatch):
    waits = []
    monkeypatch.setattr("time.sleep", waits.append)
    f = fleet(tmp_path, max_restarts=2)
    for stage in ("generate", "judge"):
        f.recover(ActorError(f"judge 0 failed in {stage}", "judge 0"), 1, stage, 0.0)
    assert waits == [1.0, 2.0]  # backoff doubles
    with pytest.raises(ActorError):
        f.recover(ActorError("learner rank 1 died", "learner 1", died=True), 1, "learn", 0.0)
    assert [r["action"] for r in rows_of(tmp_path / "faults.jsonl")] == [
        "restarted",
        "restarted",
        "stopped",
    ]


def test_kill_points_reach_the_named_actor(monkeypatch):
    killed = []
    monkeypatch.setenv("INPO_KILL_AT", "generator:0@generate.chunk#2,learner:1@learn.step3")
    points = Faults.from_env()
    points.killer = killed.append
    for point in ("generate.chunk", "learn.step3", "generate.chunk", "generate.chunk"):
        points.point(point)
    assert killed == ["learner:1", "generator:0"]
    again = Faults.from_env()  # a new run counts from zero
    again.killer = killed.append
    again.point("learn.step3")
    assert killed == ["learner:1", "generator:0", "learner:1"]


def test_a_torn_chunk_is_cut_off(tmp_path):
    path = tmp_path / "partial.jsonl"
    append_jsonl(path, [{"prompt_id": 0}, {"prompt_id": 1}])
    with path.open("a") as f:
        f.write('{"prompt_id": 2, "resp')  # a crash mid-append
    assert read_jsonl_prefix(path) == [{"prompt_id": 0}, {"prompt_id": 1}]
    assert path.read_text().endswith("}\n")
    assert read_jsonl_prefix(tmp_path / "absent.jsonl") == []


class Generators:
    """Answers like a GeneratorGroup (one sample per seed) and counts the prompts asked."""

    actors = [None]

    def __init__(self):
        self.asked = 0

    def generate(self, ids, seeds, **sampling):
        self.asked += len(ids)
        return [
            [{"text": f"r{s}", "finish_reason": "stop", "logp": -1.0, "token_ids": [s]}]
            for s in seeds
        ]


def test_generate_keeps_finished_chunks_and_redoes_the_rest(tmp_path):
    ids = list(range(10))
    args = ([f"p{i}" for i in ids], ids, [[i] for i in ids])
    kw = dict(seeds=[100 + i for i in ids], n=1, temperature=1.0, top_p=1.0, max_tokens=4)
    whole = generate_rows(Generators(), *args, **kw, chunk_prompts=3)
    partial = tmp_path / "generations.partial.jsonl"
    append_jsonl(partial, whole[:6])  # two chunks of 3 finished before a fault
    gen = Generators()
    again = generate_rows(gen, *args, **kw, chunk_prompts=3, partial=partial)
    assert again == whole and gen.asked == 4
    assert read_jsonl_prefix(partial) == whole
    # chunks of another prompt list are not taken for these
    gen = Generators()
    assert generate_rows(gen, *args[:2], args[2], **kw, chunk_prompts=3, partial=partial) == whole
    other = generate_rows(gen, ["x"], [7], [[7]], **{**kw, "seeds": [1]}, partial=partial)
    assert [r["prompt_id"] for r in other] == [7] and read_jsonl_prefix(partial) == other


def test_judge_keeps_finished_chunks_and_redoes_the_rest(tmp_path):
    from inpo.judging.build import synthetic_oracle
    from inpo.judging.stage import select_in_chunks, select_pairs

    oracle = synthetic_oracle(InpoConfig().oracle)  # vowels: exact, batch-independent
    rows = [
        {"prompt_id": i, "prompt": "p", "responses": [f"{'a' * i}xy{'e' * j}" for j in range(4)]}
        for i in range(7)
    ]
    whole = select_pairs(rows, oracle, "tournament", 0)
    partial = tmp_path / "judge.partial.jsonl"
    cfg = InpoConfig.model_validate(
        {"pairing": {"strategy": "tournament"}, "oracle": {"chunk_prompts": 3}, "run": {"seed": 0}}
    )
    first, kept = select_in_chunks(rows[:3], oracle, cfg, partial, "judge")
    assert kept == 0 and first == whole[:3]  # one finished chunk of three prompts
    calls = []

    class Counting(type(oracle)):
        def prob(self, prompts, a, b):
            calls.append(len(prompts))
            return super().prob(prompts, a, b)

    counting = Counting(oracle.score, oracle.scale)
    again, kept = select_in_chunks(rows, counting, cfg, partial, "judge")
    assert again == whole and kept == 3
    assert sum(calls) == sum(s.n_comparisons for s in whole[3:])  # rows 3..6 only
