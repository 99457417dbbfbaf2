"""Run state, stage table and durable writes (inpo.run.state, inpo.durable)."""

import json

import pytest

from inpo.durable import damaged, manifest, write_atomic, write_jsonl_atomic
from inpo.run.state import RunState
from inpo.run.trainer import Trainer
from inpo.stages import ITERATION, SETUP, STAGES


def test_run_state_roundtrip_and_atomic(tmp_path):
    s = RunState(tmp_path / "state.json")
    s.start(1, "generate")
    assert json.loads((tmp_path / "state.json").read_text())["running"]["stage"] == "generate"
    s.finish(1, "generate", {"prompts": 3})
    s2 = RunState.load(tmp_path / "state.json")
    assert s2.is_done(1, "generate") and not s2.is_done(1, "judge")
    assert s2.info(1, "generate") == {"prompts": 3} and s2.data["running"] is None
    assert not (tmp_path / "state.json.tmp").exists()


def test_undo_from_forgets_the_stage_and_every_later_one(tmp_path):
    s = RunState(tmp_path / "state.json")
    for name in STAGES:
        s.finish(2, name, {})
    s.finish(1, "eval", {})
    s.undo_from(2, "learn")
    assert [n for n in STAGES if s.is_done(2, n)] == ["generate", "judge", "logps"]
    assert s.is_done(1, "eval")
    assert not RunState.load(tmp_path / "state.json").is_done(2, "save")


def test_every_stage_has_one_method():
    for spec in SETUP + ITERATION:
        assert callable(getattr(Trainer, f"_{spec.name}")), spec.name


def test_manifest_detects_a_short_or_changed_file(tmp_path):
    write_jsonl_atomic(tmp_path / "rows.jsonl", [{"a": i} for i in range(100)])

    def policy(tmp):
        tmp.mkdir()
        (tmp / "w.bin").write_bytes(b"x" * 1000)

    write_atomic(tmp_path / "policy", policy)
    rec = manifest(tmp_path, [tmp_path / "rows.jsonl", tmp_path / "policy"])
    assert set(rec) == {"rows.jsonl", "policy/w.bin"}
    assert damaged(tmp_path, rec) is None
    data = (tmp_path / "rows.jsonl").read_bytes()
    (tmp_path / "rows.jsonl").write_bytes(data[:-10])
    assert "bytes" in damaged(tmp_path, rec)
    (tmp_path / "rows.jsonl").write_bytes(data[:-1] + b"!")
    assert "checksum" in damaged(tmp_path, rec)
    (tmp_path / "rows.jsonl").write_bytes(data)
    (tmp_path / "policy" / "w.bin").unlink()
    assert "missing" in damaged(tmp_path, rec)


def test_write_atomic_replaces_a_directory_and_leaves_no_temp(tmp_path):
    for text in ("old", "new"):

        def write(tmp, text=text):
            tmp.mkdir()
            (tmp / "f").write_text(text)

        write_atomic(tmp_path / "d", write)
    assert (tmp_path / "d" / "f").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]

    def boom(tmp):
        tmp.mkdir()
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        write_atomic(tmp_path / "d", boom)
    assert (tmp_path / "d" / "f").read_text() == "new"  # the published copy is untouched
