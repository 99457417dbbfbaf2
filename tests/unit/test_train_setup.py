"""What `inpo train` decides before any actor starts: a run short of prompts is refused,
and a resume's run.* overrides are written into the run's config.yaml (no Ray here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import inpo_cli

from inpo.config import ConfigError, load_config
from inpo.errors import InpoError
from inpo.run import train as run_train
from inpo.run.state import RunState


@pytest.fixture
def stub_trainer(monkeypatch):
    """Trainer.prepare and Trainer.run as stubs; returns the configs runs were given."""
    ran: list = []
    monkeypatch.setattr(run_train.Trainer, "prepare", lambda self: None)
    monkeypatch.setattr(run_train.Trainer, "run", lambda self: ran.append(self.cfg) or [])
    return ran


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(None, [f"run.dir={run}"])
    (run / run_train.CONFIG_FILE).write_text(cfg.to_yaml())
    state = RunState(run / run_train.STATE_FILE)
    state.data["run_id"] = "inpo-test"
    state.save()
    return run


def test_resume_overrides_last_into_the_next_plain_resume(tmp_path, stub_trainer):
    """`--resume RUN run.iterations=5`, then a plain `--resume` (a requeued SLURM job)."""
    run = _run_dir(tmp_path)
    run_train.train(resume=run, overrides=["run.iterations=5"])
    assert load_config(run / run_train.CONFIG_FILE).run.iterations == 5
    assert not list(run.glob("*.tmp"))  # written under a temporary name, then renamed
    run_train.train(resume=run)
    assert [cfg.run.iterations for cfg in stub_trainer] == [5, 5]
    # extending a run past its prompts is asked for by name, and kept too
    run_train.train(resume=run, overrides=["data.allow_reuse=true"])
    assert load_config(run / run_train.CONFIG_FILE).data.allow_reuse
    with pytest.raises(InpoError, match="data.eval_size=3"):
        run_train.train(resume=run, overrides=["data.eval_size=3"])


def test_a_refused_resume_leaves_the_config_as_it_was(tmp_path, monkeypatch):
    run = _run_dir(tmp_path)
    before = (run / run_train.CONFIG_FILE).read_text()

    def refuse(self):
        raise ConfigError("config error: data.prompts_per_iteration = 64: too few")

    monkeypatch.setattr(run_train.Trainer, "prepare", refuse)
    with pytest.raises(ConfigError, match="too few"):  # the CLI: exit 2 (the test below)
        run_train.train(resume=run, overrides=["run.iterations=50"])
    assert (run / run_train.CONFIG_FILE).read_text() == before


def test_a_run_that_would_reuse_prompts_exits_2_and_leaves_no_run(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say {i}"}) + "\n" for i in range(60)))
    run = tmp_path / "run"
    args = ["train", f"data.prompts={prompts}", "data.prompts_per_iteration=20"]
    r = inpo_cli(*args, "data.eval_size=4", f"run.dir={run}")
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().count("\n") == 0
    assert "data.prompts_per_iteration = 20" in r.stderr and "need 60" in r.stderr
    assert "holds 56" in r.stderr
    # nothing was started: the same run.dir takes the fixed config
    assert not (run / run_train.STATE_FILE).exists() and not (run / run_train.CONFIG_FILE).exists()


def test_train_without_a_config_says_it_is_not_the_quickstart(tmp_path, stub_trainer, capsys):
    from inpo.cli import QUICKSTART, main

    main(["train", f"run.dir={tmp_path / 'run'}"])
    first = capsys.readouterr().out.splitlines()[0]
    assert "schema's defaults" in first and f"inpo train {QUICKSTART}" in first
    differs = {
        k
        for k, v in load_config(QUICKSTART).model_dump().items()
        if stub_trainer[0].model_dump()[k] != v
    }
    assert {"data", "generation", "pairing", "loss", "learner"} <= differs
