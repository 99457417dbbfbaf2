"""The Nash family's driver side (no engines): which policies iteration t's loss reads
(MNPO's past iterates, COMAL's reset reference), what metrics.jsonl records of it, the
cached columns, and SPPO's per-response win rates checked before any learner starts."""

from pathlib import Path

import pytest
import torch

from inpo.config import InpoConfig
from inpo.errors import InpoError
from inpo.learning.group import cache_from_logps
from inpo.learning.stage import check_win_rates
from inpo.rows import read_pairs
from inpo.run.trainer import Trainer


def trainer(tmp_path: Path, **loss) -> Trainer:
    cfg = InpoConfig.model_validate({"loss": loss, "run": {"dir": str(tmp_path)}})
    t = Trainer(cfg, tmp_path, state=None)
    t.base_policy, t.reference = "/models/pi1", "/models/ref"
    return t


def test_comal_resets_the_reference_every_k_iterations(tmp_path):
    t = trainer(tmp_path, reference_reset_every=2)
    refs = [t.reference_for(i) for i in range(1, 7)]
    policy = [str(tmp_path / f"iter_{i}" / "policy") for i in (2, 4)]
    assert refs == ["/models/ref", "/models/ref", policy[0], policy[0], policy[1], policy[1]]
    assert [t.objective(i)["reference_iteration"] for i in (1, 3, 5)] == [0, 3, 5]
    assert t.objective(3)["objective"] == "inpo, pi_ref=pi_3"
    plain = trainer(tmp_path)
    assert [plain.reference_for(i) for i in (1, 5)] == ["/models/ref"] * 2
    assert plain.objective(5) == {"loss_type": "inpo"}  # no objective column
    sppo = trainer(tmp_path, type="sppo")  # anchored to pi_t alone: no pi_ref forward
    assert sppo.reference_for(1) == "/models/pi1"
    assert sppo.reference_for(2) == str(tmp_path / "iter_1" / "policy")


def test_mnpo_reads_the_past_iterates_that_exist_and_renormalises(tmp_path):
    t = trainer(tmp_path, type="mnpo", history_weights=[0.5, 0.3, 0.2])
    assert t.history(1) == []
    assert t.history(2) == ["/models/pi1"]
    assert t.history(4) == [str(tmp_path / f"iter_{i}" / "policy") for i in (2, 1)]
    assert t.objective(1)["history_weights"] == [1.0]
    assert t.objective(2)["history_weights"] == pytest.approx([0.625, 0.375])
    assert t.objective(3)["objective"] == "mnpo 0.50/0.30/0.20"


@pytest.mark.parametrize(
    "loss, message",
    [
        ({"type": "mnpo"}, "set it with loss.type=mnpo and only then"),
        ({"history_weights": [1.0]}, "set it with loss.type=mnpo and only then"),
        ({"type": "mnpo", "history_weights": []}, "one or more weights"),
        ({"type": "mnpo", "history_weights": [0.5, -0.1]}, "one or more weights"),
        ({"reference_reset_every": -1}, "reference_reset_every"),
    ],
)
def test_bad_family_settings_are_refused(loss, message):
    with pytest.raises(ValueError, match=message):
        InpoConfig.model_validate({"loss": loss})


def test_cache_columns_of_past_iterates():
    ref, pi_t, h1, h2 = (torch.randn(5, 2) for _ in range(4))
    cache = cache_from_logps(ref, pi_t, h1, h2)
    assert list(cache) == [
        "ref_chosen",
        "ref_rejected",
        "pi_t_chosen",
        "pi_t_rejected",
        "pi_hist1_chosen",
        "pi_hist1_rejected",
        "pi_hist2_chosen",
        "pi_hist2_rejected",
    ]
    assert torch.equal(cache["pi_hist2_rejected"], h2[:, 1])
    assert list(cache_from_logps(ref, pi_t)) == list(cache)[:4]


def test_sppo_needs_each_responses_win_rate(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text(
        '{"prompt": "p", "chosen": "a", "rejected": "b", "chosen_p_win": 0.7, '
        '"rejected_p_win": 0.2}\n{"prompt": "p", "chosen": "a", "rejected": "b"}\n'
    )
    rows = read_pairs(f)
    sppo = InpoConfig.model_validate({"loss": {"type": "sppo"}})
    with pytest.raises(InpoError, match=r"pairs.jsonl: row 2: field 'chosen_p_win': missing"):
        check_win_rates(sppo, rows, f)
    check_win_rates(InpoConfig(), rows, f)  # the other losses do not read them
    f.write_text('{"prompt": "p", "chosen": "a", "rejected": "b", "rejected_p_win": 1.5}\n')
    with pytest.raises(InpoError, match=r"row 1: field 'rejected_p_win': 1.5 is not a number"):
        read_pairs(f)
