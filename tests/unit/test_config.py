import pytest
from helpers import inpo_cli

from inpo.config import ConfigError, InpoConfig, describe_fields, load_config, parse_overrides


def test_defaults_are_valid_and_tau_defaults_to_eta_over_3():
    cfg = load_config()
    assert cfg.loss.tau == pytest.approx(cfg.loss.eta / 3)
    assert load_config(None, ["loss.eta=0.3"]).loss.tau == pytest.approx(0.1)


@pytest.mark.parametrize(
    "ranks,micro,batch,accum", [(1, 4, 16, 4), (2, 4, 32, 4), (2, 2, 24, 6), (4, 1, 128, 32)]
)
def test_gradient_accumulation_steps(ranks, micro, batch, accum):
    over = [f"learner.num_ranks={ranks}", f"learner.micro_batch_size={micro}"]
    cfg = load_config(None, [*over, f"learner.global_batch_size={batch}"])
    assert cfg.learner.grad_accum == accum


def test_paper_configs_are_the_authors_recipe():
    """The authors' trainer: Hugging Face AdamW defaults; RLHFlow's three 20K prompt sets,
    one per iteration, as chat messages (`context_messages`)."""
    for name in ("paper_pairpm", "paper_reward"):
        cfg = load_config(f"configs/{name}.yaml")
        assert cfg.learner.adam_betas == (0.9, 0.999) and cfg.learner.weight_decay == 0.0
        files = cfg.data.prompts
        assert isinstance(files, list) and len(files) == cfg.run.iterations == 3
        for t, f in enumerate(files, start=1):
            assert f"iterative-prompt-v1-iter{t}-20K" in f
        assert cfg.data.prompt_field == "context_messages"
        assert cfg.data.eval_prompts and cfg.data.eval_prompts not in files
        assert cfg.data.prompts_per_iteration == 20000 and not cfg.data.allow_reuse


def test_prompt_files_one_per_iteration():
    three = ["data.prompts=[a.jsonl, b.jsonl, c.jsonl]"]
    assert load_config(None, [*three, "run.iterations=3"]).data.prompt_files == [
        "a.jsonl",
        "b.jsonl",
        "c.jsonl",
    ]
    assert load_config(None, [*three, "run.iterations=2"]).data.prompt_files[1] == "b.jsonl"
    assert load_config(None, ["data.prompts=a.jsonl"]).data.prompt_files == ["a.jsonl"]
    # one file in a list is one file for every iteration
    assert load_config(None, ["data.prompts=[a.jsonl]", "run.iterations=7"]).run.iterations == 7
    with pytest.raises(ConfigError) as e:
        load_config(None, [*three, "run.iterations=4"])
    msg = str(e.value)
    assert "data.prompts = ['a.jsonl', 'b.jsonl', 'c.jsonl']" in msg
    assert "run.iterations = 4" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match=r"data.prompts = \[\]"):
        load_config(None, ["data.prompts=[]"])


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
        ("learner.epochs=0", "learner.epochs = 0: must be a whole number >= 1 or auto"),
        ("learner.epochs=some", "learner.epochs = 'some': must be a whole number"),
        ("learner.heldout_fraction=1", "learner.heldout_fraction = 1"),
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


def test_config_reference_is_current():
    from pathlib import Path

    assert describe_fields() in Path("docs/config.md").read_text()


def test_auto_epochs_need_heldout_pairs_and_lay_the_schedule_over_the_cap():
    cfg = load_config(None, ["learner.epochs=auto", "learner.max_epochs=5"])
    assert cfg.learner.epochs == "auto" and cfg.learner.epoch_cap == 5
    assert load_config(None, ["learner.epochs=3"]).learner.epoch_cap == 3
    with pytest.raises(ConfigError, match="learner.heldout_fraction > 0"):
        load_config(None, ["learner.epochs=auto", "learner.heldout_fraction=0"])


@pytest.mark.parametrize(
    "dtype,device,expected",
    [
        ("auto", "cpu", True),
        ("float32", "cuda", True),
        ("auto", "cuda", False),
        ("bfloat16", "cpu", False),
    ],
)
def test_autocast_is_in_effect_only_over_weights_not_already_bf16(dtype, device, expected):
    """The learner and the logps cache key ask one helper; autocast over bf16 weights is
    a no-op, so switching it must not recompute a cache."""
    from inpo.models import autocasts

    assert autocasts("bfloat16", dtype, device) is expected
    assert autocasts("off", dtype, device) is False
