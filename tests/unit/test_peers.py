"""bench/peers.py's arithmetic (no engines, no TRL): the evaluation grid, inpo's training
seconds from its stage lines, which policy inpo holds at each point, and the reach ratio
that is the bench's last line."""

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "peers.py"
_spec = importlib.util.spec_from_file_location("bench_peers", _PATH)
peers = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = peers  # dataclasses look their module up there
_spec.loader.exec_module(peers)


def point(prompts: int, seconds: float, pass_rate: float) -> "peers.Point":
    return peers.Point(prompts, seconds, 0, f"p{prompts}", "", {"pass_rate": pass_rate})


def test_every_iteration_end_is_an_evaluation_point():
    assert peers.default_every([160, 160, 240]) == 80
    assert peers.default_every([64]) == 64


def test_inpo_seconds_leave_out_eval_stages_and_charge_back_the_engine_start():
    events = [
        (0, "eval_ref", 40.0, 45.0),  # 30 s of engine start + 10 s of answers
        (1, "generate", 20.0, 65.0),
        (1, "learn", 100.0, 165.0),
        (1, "sync", 1.0, 166.0),
        (1, "eval", 10.0, 176.0),
        (2, "generate", 20.0, 196.0),
        (2, "sync", 1.0, 300.0),
        (2, "eval", 10.0, 310.0),
    ]
    seconds = peers.inpo_seconds(events, engine_start=30.0)
    assert seconds == {1: pytest.approx(166 - 40 + 30), 2: pytest.approx(300 - 50 + 30)}


def test_inpo_holds_its_last_finished_iteration_between_iteration_ends():
    runs = Path("/r")
    pts = peers.inpo_points(
        80, [160, 320, 560], {1: 10.0, 2: 20.0, 3: 30.0}, [5, 6, 7], runs, "/ref"
    )
    assert [p.prompts for p in pts] == [80, 160, 240, 320, 400, 480, 560]
    assert [p.policy for p in pts] == ["/ref"] + [f"/r/iter_{t}/policy" for t in (1, 1, 2, 2, 2, 3)]
    assert [p.label for p in pts] == [
        "pi_ref",
        "pi_2",
        "pi_2 (= 160)",
        "pi_3",
        "pi_3 (= 320)",
        "pi_3 (= 320)",
        "pi_4",
    ]
    assert [p.seconds for p in pts] == [0.0, 10.0, 10.0, 20.0, 20.0, 20.0, 30.0]
    assert [p.tokens for p in pts] == [0, 5, 5, 11, 11, 11, 18]


def test_ratio_compares_the_first_points_at_or_above_trls_final_pass_rate():
    trl = [point(80, 100, 0.5), point(160, 200, 0.7), point(240, 300, 0.6)]
    # TRL first reaches its final 0.6 at 160 (200 s); inpo first at 160 (50 s)
    inpo = [point(80, 0, 0.4), point(160, 50, 0.65), point(240, 50, 0.65)]
    assert peers.first_reach(trl, 0.6).prompts == 160
    assert peers.ratio_line(trl, inpo) == "4.00x"
    # unordered input: the fewest prompts first
    assert peers.ratio_line(trl[::-1], inpo[::-1]) == "4.00x"


def test_ratio_line_says_when_inpo_never_reaches_or_starts_there():
    trl = [point(80, 100, 0.5), point(160, 200, 0.9)]
    never = peers.ratio_line(trl, [point(80, 10, 0.4), point(160, 20, 0.89)])
    assert never.startswith("inpo does not reach TRL's final pass rate (0.900)")
    start = peers.ratio_line(trl, [point(80, 0, 0.95), point(160, 20, 0.95)])
    assert start.startswith("inpo's starting policy (pi_ref) already has")
