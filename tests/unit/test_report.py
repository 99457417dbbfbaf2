"""The iteration table, win rates (inpo.run.report, inpo.run.evaluate)."""

import pytest

from inpo.run.evaluate import win_rate
from inpo.run.report import plot, table


def test_win_rate_interval():
    r = win_rate([1.0] * 30 + [0.0] * 10)
    assert r["mean"] == pytest.approx(0.75)
    assert r["ci_low"] < 0.75 < r["ci_high"] and r["ci_low"] > 0.5
    assert win_rate([0.5] * 9)["ci_low"] == pytest.approx(0.5)
    assert win_rate([])["n"] == 0


def test_table_formats_rows():
    rows = [
        {
            "iteration": 1,
            "pairs": 10,
            "epochs": 2,
            "heldout_excess_start": 4.0,
            "heldout_excess_end": 1.0,
            "train_excess_start": 3.9,
            "train_excess_end": 0.5,
            "win_vs_ref": 0.7,
            "win_vs_ref_ci": [0.6, 0.8],
            "generate_seconds": 2.0,
        }
    ]
    lines = table(rows).splitlines()
    assert lines[0].split()[0] == "iter" and len(lines) == 3
    assert "0.700 [0.600, 0.800]" in lines[2] and "4 > 1 (75%)" in lines[2]
    assert "3.9 > 0.5" in lines[2] and "held-out excess (removed)" in lines[0]
    assert lines[2].split()[-1] == "2"  # seconds summed over stages


def test_actor_errors_come_down_to_their_root_cause():
    from inpo.plan.actors import death_cause, root_cause

    try:
        try:
            raise OSError("disk full")
        except OSError as inner:
            raise RuntimeError(
                "Engine core initialization failed.\nSee root cause above"
            ) from inner
    except RuntimeError as e:
        assert root_cause(e) == "OSError: disk full"
    created = Exception(
        "The actor died because of an error raised in its creation task, ray::X.__init__()\n"
        '  File "x.py", line 3, in <module>\n'
        "ImportError: cannot import name 'y' from 'z'\n"
    )
    assert death_cause(created) == "ImportError: cannot import name 'y' from 'z'"
    assert death_cause(Exception("The actor was killed: out of memory\nmore")) == (
        "The actor was killed: out of memory"
    )


def test_a_validation_error_comes_down_to_its_first_error_not_pydantics_footer():
    """vLLM checks its engine config with pydantic, whose message ends with a link: the
    line a user needs is the first error, with the model and field it names."""
    import pydantic

    from inpo.plan.actors import death_cause, root_cause

    class EngineConfig(pydantic.BaseModel):
        max_model_len: int
        block_size: int = 16

        @pydantic.model_validator(mode="after")
        def fits(self):
            if self.max_model_len > 8192:
                raise ValueError(
                    f"User-specified max_model_len ({self.max_model_len}) is greater than "
                    "the derived max_model_len (max_position_embeddings=8192)"
                )
            return self

    with pytest.raises(pydantic.ValidationError) as model_level:
        EngineConfig(max_model_len=9000)
    assert root_cause(model_level.value) == (
        "ValidationError: EngineConfig: Value error, User-specified max_model_len (9000) is "
        "greater than the derived max_model_len (max_position_embeddings=8192)"
    )
    with pytest.raises(pydantic.ValidationError) as fields:
        EngineConfig(max_model_len="long", block_size="big")
    assert root_cause(fields.value) == (
        "ValidationError: EngineConfig.max_model_len: Input should be a valid integer, "
        "unable to parse string as an integer"
    )
    # as Ray quotes it when the actor's constructor raised it
    created = Exception(
        "The actor died because of an error raised in its creation task\n" + str(model_level.value)
    )
    assert death_cause(created).startswith("EngineConfig: Value error, User-specified")


def test_plot_reads_whole_iterations_and_the_pass_rate(tmp_path):
    import matplotlib.image

    rows = [
        {"iteration": 0, "pass_rate": 0.3},
        *(
            {
                "iteration": t,
                "pass_rate": 0.3 + 0.1 * t,
                "heldout_excess_start": 4.0 / t,
                "heldout_excess_end": 1.0 / t,
                "win_vs_ref": 0.6,
                "win_vs_ref_ci": [0.5, 0.7],
            }
            for t in (1, 2, 3)
        ),
    ]
    png = plot(rows, tmp_path)
    assert matplotlib.image.imread(png).shape[1] == 1300  # three panels: the pass rate too
    assert matplotlib.image.imread(plot(rows[1:2], tmp_path)).shape[1] == 1300
    assert matplotlib.image.imread(plot([{"iteration": 1}], tmp_path)).shape[1] == 900
