import pytest
from helpers import inpo_cli

from inpo.config import ConfigError, InpoConfig, describe_fields, load_config, parse_overrides


def test_defaults_are_valid_and_tau_defaults_to_eta_over_3():
    cfg = load_config()
    assert cfg.loss.tau == pytest.approx(cfg.loss.eta / 3)
    assert cfg.learner.grad_accum * cfg.learner.num_ranks * cfg.learner.micro_batch_size == (
        cfg.learner.global_batch_size
    )


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("learner:\n  lr: 1.0e-4\n  epochs: 3\nloss:\n  eta: 0.01\n")
    cfg = load_config(f, ["learner.lr=1e-6", "deepspeed.extra={a: 1}", "run.dir=2024"])
    assert cfg.learner.lr == 1e-6 and cfg.learner.epochs == 3
    assert cfg.loss.eta == 0.01 and cfg.deepspeed.extra == {"a": 1}
    assert cfg.run.dir == "2024"


def test_parse_overrides_nests():
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


@pytest.mark.parametrize(
    "override,needle",
    [
        ("learner.lrr=1", "learner.lrr = 1: unknown field"),
        ("learner.lr=abc", "learner.lr = 'abc'"),
        ("loss.tau=0.5", "loss.tau = 0.5: must be < loss.eta"),
        ("learner.global_batch_size=7", "learner.global_batch_size = 7"),
        ("oracle.backend=pairpm", "oracle.model"),
        ("model.tiny_hidden=65", "model.tiny_hidden = 65"),
        ("generation.num_samples=1", "generation.num_samples = 1"),
        ("oops", "oops"),
    ],
)
def test_bad_values_name_field_and_value(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_every_field_is_documented():
    from pydantic import BaseModel

    doc = describe_fields()

    def walk(cls, prefix):
        for name, f in cls.model_fields.items():
            if f.default_factory is not None and isinstance(f.default_factory(), BaseModel):
                walk(f.default_factory().__class__, f"{prefix}{name}.")
            else:
                assert f.description, f"{prefix}{name} has no description"
                assert f"`{prefix}{name}`" in doc

    walk(InpoConfig, "")
    assert "`model.lora.r`" in doc


def test_cli_exits_2_with_one_line():
    r = inpo_cli("config", "show", "learner.lr=abc")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "learner.lr" in r.stderr
    ok = inpo_cli("config", "show", "configs/quickstart.yaml", "learner.lr=0.5")
    assert ok.returncode == 0, ok.stderr
    assert "lr: 0.5" in ok.stdout


def test_shipped_configs_validate():
    from pathlib import Path

    for f in sorted(Path("configs").glob("*.yaml")):
        load_config(f)


def test_readme_config_reference_is_current():
    from pathlib import Path

    assert describe_fields() in Path("README.md").read_text()
