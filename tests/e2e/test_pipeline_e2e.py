"""`inpo train` end to end: a full run, SIGKILL + resume at every stage, the paper's
recipes, dead actors and bad input. Real Ray, vLLM (CPU) and DeepSpeed (CPU, gloo).

Runs go in-process on the session's Ray cluster (`inpo_here`); a run that is SIGKILLed is
a process of its own (`inpo_train`), on that same cluster where it joins it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import final_weights, inpo_here, inpo_train
from safetensors.torch import load_file

pytestmark = pytest.mark.e2e

SMALL = [
    "run.iterations=2",
    "data.prompts_per_iteration=[32, 24]",  # iteration 2 draws 24
    "data.eval_size=16",
    "generation.num_samples=4",
    "generation.max_new_tokens=16",
    "learner.global_batch_size=8",
    "learner.micro_batch_size=4",
    "learner.checkpoint_every=2",
    "run.tensorboard=false",
]
# Where each stage's finished output lives: it must never be rewritten after a resume.
OUTPUTS = {
    "generate": "generations.jsonl",
    "judge": "pairs.jsonl",
    "logps": "logps.safetensors",
    "save": "policy/model.safetensors",
    "eval": "eval.jsonl",
}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, ray_cluster):
    run = tmp_path_factory.mktemp("pipeline") / "full"
    r = inpo_here("train", *SMALL, f"run.dir={run}")
    assert r.returncode == 0, r.stderr[-4000:]
    return run, r


def test_full_run_reports_everything(full_run):
    run, r = full_run
    assert "win vs ref [95% CI]" in r.stdout and "final policy:" in r.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [0, 1, 2]  # 0: the initial policy
    assert [row["prompts"] for row in rows[1:]] == [32, 24]
    drawn = [
        {json.loads(x)["prompt_id"] for x in (run / f"iter_{t}" / "generations.jsonl").open()}
        for t in (1, 2)
    ]
    assert not drawn[0] & drawn[1]  # iteration 2's slice follows iteration 1's
    assert rows[0]["mean_length"] > 0 and "win_vs_ref" not in rows[0]  # pi_1 = pi_ref
    for row in rows[1:]:
        t = row["iteration"]
        assert row["pairs"] > 0 and row["comparisons"] == row["prompts"] * 5  # K=4: 3K/2-1
        # the win rate is the mean of the oracle's P stored per held-out prompt, with the
        # normal-approximation interval of those 16 values
        ps = [json.loads(x)["p_vs_ref"] for x in (run / f"iter_{t}" / "eval.jsonl").open()]
        mean, sd = sum(ps) / len(ps), float(torch.tensor(ps, dtype=torch.float64).std())
        assert len(ps) == 16 and row["win_vs_ref"] == pytest.approx(mean)
        half = 1.96 * sd / len(ps) ** 0.5
        assert row["win_vs_ref_ci"] == pytest.approx([max(0, mean - half), min(1, mean + half)])
        assert row["sync_max_token_diff"] < 1e-4
        assert len(row["weights_sha256"]) == 64
        assert row["sync_via"] == "memory"  # the sync after a save in the same process
        # the excess before the first step, recomputed from the pairs and the cached
        # log-probs: at pi = pi_t the margin is h = (tau/eta) [pi_t - pi_ref margins], and
        # the soft loss less its floor 4 P (1 - P) c^2 is (h - (2P - 1) c)^2, c = 1/(2 eta)
        pairs = [json.loads(x) for x in (run / f"iter_{t}" / "pairs.jsonl").open()]
        cache = load_file(str(run / f"iter_{t}" / "logps.safetensors"))
        h = (cache["pi_t_chosen"] - cache["pi_t_rejected"]).double()
        h = (h - (cache["ref_chosen"] - cache["ref_rejected"]).double()) / 3
        if t == 1:
            assert h.abs().max() == 0  # pi_t = pi_ref
        p = torch.tensor([x["p_label"] for x in pairs], dtype=torch.float64)
        at_start = ((h - (2 * p - 1) * 2.0) ** 2).mean().item()
        held = row["heldout_pairs"]
        assert 0 < held < len(pairs) and row["epochs"] == 2
        assert row["steps"] == 2 * ((len(pairs) - held) // 8)  # only training pairs step
        split = (len(pairs) - held) * row["train_excess_start"] + held * row["heldout_excess_start"]
        assert split / len(pairs) == pytest.approx(at_start, rel=1e-5)
        assert row["train_excess_end"] < 0.5 * row["train_excess_start"]
    assert (run / "summary.png").stat().st_size > 1000
    state = json.loads((run / "state.json").read_text())
    assert state["running"] is None and set(state["done"]) == {"0", "1", "2"}
    assert not list(run.glob("iter_*/checkpoints"))  # step checkpoints dropped after save
    for t in (1, 2):
        assert (run / f"iter_{t}" / "policy" / "config.json").exists()  # policies kept
        assert "policy/model.safetensors" in state["done"][str(t)]["save"]["outputs"]
    # soft labels: the row keeps the vowels oracle's own P, recomputed here
    from inpo.judging.synthetic import VOWEL_SCALE, sigmoid, vowel_score

    pairs = [json.loads(line) for line in (run / "iter_1" / "pairs.jsonl").read_text().splitlines()]
    for p in pairs:
        want = sigmoid(4.0 * VOWEL_SCALE * (vowel_score(p["chosen"]) - vowel_score(p["rejected"])))
        assert p["p_chosen"] == pytest.approx(want, abs=1e-12) and p["p_label"] == p["p_chosen"]
        assert p["n_comparisons"] == 5  # K=4: 3K/2-1


def _done_outputs(run: Path) -> dict[Path, int]:
    state = json.loads((run / "state.json").read_text())
    out = {}
    for t, stages in state["done"].items():
        for stage in stages:
            if stage in OUTPUTS:
                f = run / f"iter_{t}" / OUTPUTS[stage]
                out[f] = f.stat().st_mtime_ns
    return out


# One process per kill, each resumed by the next: between "output written" and "marked
# done" of a vLLM stage in the first process (generate, iteration 1) and of the last stage
# (eval, iteration 2); inside save (a policy half written: its redo rebuilds the learner
# from learn's final checkpoint, as learn's own redo does); after the sync (the next
# process loads pi_2 from its directory). Elsewhere: logps.written under ZeRO-3 (the dead
# actors test below), kills inside learn after a step checkpoint (the LoRA, MNPO, SmolLM2
# and colocated runs); the judge's redo is a driver-only function of its seeded inputs
# (tests/unit/test_pairing.py).
KILLS = ["generate.written", "save", "sync.written", "eval.written#2"]


def test_sigkill_anywhere_then_resume_gives_the_same_weights(full_run, tmp_path, ray_session):
    """The first process starts a local cluster of its own although RAY_ADDRESS names one
    (a dead one here, as `ray start` leaves it); the resumed ones join the session's cluster
    (run.ray_address), as a requeued job joins its job's cluster: a driver killed on a
    shared cluster takes its actors with it. Before the last resume (in-process) a power
    loss is played: a stage marked done over a short file (iteration 2's pairs) and over a
    changed one (iteration 1's policy): the run finds both by their checksums, says so,
    redoes them, and still ends with the same weights."""
    run = tmp_path / "killed"
    first = inpo_train(
        *SMALL, f"run.dir={run}", crash_at=KILLS[0], extra_env={"RAY_ADDRESS": "127.0.0.1:9"}
    )
    assert first.returncode == -9, first.stderr[-3000:]
    for i, point in enumerate(KILLS[1:]):
        state = json.loads((run / "state.json").read_text())
        assert state["running"]["stage"] == KILLS[i].split(".")[0], (KILLS[i], state["running"])
        before = _done_outputs(run)
        r = inpo_train("--resume", str(run), crash_at=point, join=ray_session)
        assert r.returncode == -9, (point, r.stderr[-3000:])
        assert "resuming" in r.stdout
        for f, mtime in before.items():  # finished outputs are never recomputed
            assert f.stat().st_mtime_ns == mtime, f
    state = json.loads((run / "state.json").read_text())
    running = state["running"]
    assert (running["iteration"], running["stage"]) == (2, "eval"), running
    # The process resumed at iteration 1's sync (its save was another process's) loaded the
    # saved directory; iteration 2's sync followed its own save: in memory.
    assert [state["done"][t]["sync"]["sync_via"] for t in "12"] == ["files", "memory"]
    kept = {f: m for f, m in _done_outputs(run).items() if f.parent.name == "iter_1"}
    pairs = run / "iter_2" / "pairs.jsonl"
    pairs.write_bytes(pairs.read_bytes()[:-100])
    weights = run / "iter_1" / "policy" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    r = inpo_here("train", "--resume", str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (
        f"iteration 1: stage save is marked done but {weights} does not match its checksum; "
        "redoing from learn" in r.stdout
    )
    assert f"iteration 2: stage judge is marked done but {pairs} has" in r.stdout
    for f in (run / "iter_1" / n for n in ("generations.jsonl", "pairs.jsonl")):
        assert f.stat().st_mtime_ns == kept[f], f  # what came before the damage is kept
    a, b = final_weights(full_run[0]), final_weights(run)
    for k in a:
        assert (a[k] - b[k]).abs().max().item() < 1e-6, k
    assert (run / "iter_1" / "generations.jsonl").read_text() == (
        full_run[0] / "iter_1" / "generations.jsonl"
    ).read_text()


# --- the Nash family: the same loop, other objectives ------------------------------------

TINY_FAMILY = [
    "data.prompts_per_iteration=24",
    "data.eval_size=0",  # no eval (and no iteration-0 row): weights and objectives only
    "generation.num_samples=4",
    "generation.max_new_tokens=8",
    "learner.global_batch_size=8",
    "learner.micro_batch_size=4",
    "learner.epochs=1",
    "learner.heldout_fraction=0",
    "run.tensorboard=false",
]


def test_mnpo_under_comal_resets_killed_while_learning_resumes_exactly(tmp_path, ray_session):
    """MNPO's history cache and COMAL's reset, the two new stateful pieces, in one run of 3
    iterations (MNPO as COMAL's inner solver): iteration 3 mixes pi_3, pi_2 and pi_1 and
    trains against pi_3, its new pi_ref. Copied once done, the run forgets iteration 3's
    learn stage, is resumed there (the history cache read back from disk), killed in its
    first step and resumed again: it ends with exactly the weights of the copy."""
    from helpers import forget_from, hf_logp

    args = [*TINY_FAMILY, "run.iterations=3", "learner.checkpoint_every=1"]
    args += ["loss.type=mnpo", "loss.history_weights=[0.6, 0.3, 0.1]"]
    args.append("loss.reference_reset_every=2")
    whole = tmp_path / "whole"
    r = inpo_here("train", *args, f"run.dir={whole}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mnpo 0.60/0.30/0.10, pi_ref=pi_3" in r.stdout  # the table's objective column
    rows = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [row["loss_type"] for row in rows] == ["mnpo"] * 3
    assert [row["history_weights"] for row in rows] == [
        [1.0],
        pytest.approx([2 / 3, 1 / 3]),
        pytest.approx([0.6, 0.3, 0.1]),
    ]
    assert [row["reference_iteration"] for row in rows] == [0, 0, 3]
    cache = load_file(str(whole / "iter_3" / "logps.safetensors"))
    assert torch.equal(cache["ref_chosen"], cache["pi_t_chosen"])  # pi_ref reset to pi_3
    pairs = [json.loads(x) for x in (whole / "iter_3" / "pairs.jsonl").open()]
    ids = pairs[0]["prompt_ids"] + pairs[0]["chosen_ids"]
    older = {"pi_hist1": whole / "iter_1" / "policy", "pi_hist2": whole / "base_model"}
    for key, policy in older.items():  # pi_2 and pi_1, scored by a frozen copy each
        want = hf_logp(policy, ids, len(pairs[0]["prompt_ids"]))
        assert cache[f"{key}_chosen"][0].item() == pytest.approx(want, abs=1e-4), key
    two = load_file(str(whole / "iter_2" / "logps.safetensors"))
    assert "pi_hist2_chosen" not in two and not torch.equal(two["ref_chosen"], two["pi_t_chosen"])
    cut, whole = whole, forget_from(whole, 3, "learn", keep=tmp_path / "whole_kept")
    r = inpo_train("--resume", str(cut), crash_at="learn.step1", join=ray_session)
    assert r.returncode == -9, r.stderr[-3000:]
    assert "continuing at iteration 3, stage learn" in r.stdout
    r = inpo_here("train", "--resume", str(cut))
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = final_weights(whole, 3), final_weights(cut, 3)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sppo_and_the_online_dpo_and_ipo_recipes_train(tmp_path, ray_session, actor_pool):
    """SPPO on round-robin win rates (each response's leave-one-out mean of the vowels
    oracle's P, recomputed here from the samples); the shipped online DPO and IPO recipes,
    whose reference stays pi_ref in iteration 2. Each learn stage lowers its objective.
    The second and third runs take the first one's generator and learner ranks (the pool
    that keeps the suite's in-process runs fast)."""
    from inpo.judging.synthetic import VOWEL_SCALE, sigmoid, vowel_score

    def p(a: str, b: str) -> float:
        return sigmoid(4.0 * VOWEL_SCALE * (vowel_score(a) - vowel_score(b)))

    runs = {
        "sppo": ["loss.type=sppo", "pairing.strategy=round_robin", "run.iterations=1"],
        "dpo": ["configs/online_dpo.yaml", "run.iterations=2"],
        "ipo": ["configs/online_ipo.yaml", "run.iterations=1"],
    }
    reused = {}  # the pool's count before each run (the first may take an earlier test's)
    for name, extra in runs.items():
        reused[name] = actor_pool.reused
        config = [x for x in extra if x.endswith(".yaml")]
        overrides = [x for x in extra if not x.endswith(".yaml")]
        run = tmp_path / name
        r = inpo_here("train", *config, *TINY_FAMILY, *overrides, f"run.dir={run}")
        assert r.returncode == 0, (name, r.stderr[-3000:])
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        for row in rows:
            assert row["loss_type"] == name and row["objective"] == name
            assert row["train_excess_end"] < row["train_excess_start"], (name, row)
    assert actor_pool.reused - reused["dpo"] == 4  # (generator, learner) x (dpo, ipo)
    gens = {
        g["prompt_id"]: g
        for g in map(json.loads, (tmp_path / "sppo/iter_1/generations.jsonl").open())
    }
    for pair in map(json.loads, (tmp_path / "sppo" / "iter_1" / "pairs.jsonl").open()):
        responses = gens[pair["prompt_id"]]["responses"]
        for side in ("chosen", "rejected"):
            others = list(responses)
            others.remove(pair[side])
            want = sum(p(pair[side], o) for o in others) / len(others)
            assert pair[f"{side}_p_win"] == pytest.approx(want, abs=1e-9), side
    cache = load_file(str(tmp_path / "dpo" / "iter_2" / "logps.safetensors"))
    assert not torch.equal(cache["ref_chosen"], cache["pi_t_chosen"])  # pi_ref, not pi_2


# The paper's recipes, shrunk to tiny models on 2 CPU cores by overrides only: the model,
# the sizes (prompts, samples, lengths, ranks, actors, batch) and the prompts (held out of
# data.prompts, not the recipe's separate eval set).
PAPER_SHRUNK = [
    "data.eval_prompts=null",
    "data.prompts_per_iteration=16",
    "data.eval_size=8",
    "data.max_prompt_tokens=96",
    "generation.max_new_tokens=16",
    "generation.num_samples=4",
    "generation.num_generators=1",
    "oracle.num_actors=1",
    "oracle.max_length=512",
    "learner.num_ranks=2",
    "learner.global_batch_size=8",
    "learner.micro_batch_size=2",
    "learner.max_length=128",
    "learner.checkpoint_every=2",
    "learner.lr=1e-3",
    "run.tensorboard=false",
]


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    from inpo.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("judges") / "pairpm", seed=5)


def paper_pairpm_args(judge_dir: Path) -> list[str]:
    return [
        "configs/paper_pairpm.yaml",
        "model.policy=builtin:tiny",
        f"oracle.model={judge_dir}",
        "data.prompts=builtin:quickstart",
        *PAPER_SHRUNK,
    ]


@pytest.fixture(scope="module")
def paper_pairpm_whole(tmp_path_factory, judge_dir, ray_cluster) -> Path:
    whole = tmp_path_factory.mktemp("paper_pairpm") / "whole"
    r = inpo_here("train", *paper_pairpm_args(judge_dir), f"run.dir={whole}")
    assert r.returncode == 0, r.stderr[-3000:]
    return whole


def assert_same_weights(a_run: Path, b_run: Path, t: int) -> None:
    a, b = final_weights(a_run, t), final_weights(b_run, t)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_dead_actors_are_restarted_and_a_sigkilled_run_resumes_exactly(
    tmp_path, judge_dir, paper_pairpm_whole, ray_session
):
    """configs/paper_pairpm.yaml (ZeRO-3 with 2 ranks, bf16, pair-PM judge, tournament,
    three iterations) with every kind of fault in one run. In a process of its own: the
    generator's process SIGKILLed after 2 of its 4 chunks of iteration 1's generate stage,
    the judge's after the first tournament round of iteration 1, then the driver itself in
    iteration 2 once its log-probs are written (where a ZeRO-3 run used to die loading the
    frozen pi_t). Resumed, learner rank 1's process is SIGKILLed after the last of 2 steps
    of iteration 3's learn stage. Each actor fault is one faults.jsonl row and is restarted
    by the run itself, the generate stage kept its finished chunks, the learn stage
    continued from its step-1 checkpoint, and the weights are exactly those of the
    uninterrupted run."""
    from inpo.run.state import RunState

    whole, run = paper_pairpm_whole, tmp_path / "faulty"
    cfg = yaml.safe_load((whole / "config.yaml").read_text())
    assert cfg["deepspeed"]["zero_stage"] == 3 and cfg["model"]["dtype"] == "bfloat16"
    rows = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [0, 1, 2, 3]
    assert final_weights(whole, 3)["model.norm.weight"].dtype == torch.bfloat16
    args = [*paper_pairpm_args(judge_dir), "generation.chunk_prompts=4"]
    args.append("learner.checkpoint_every=1")
    first = inpo_train(
        *args,
        f"run.dir={run}",
        crash_at="logps.written#2",
        join=ray_session,
        extra_env={"INPO_KILL_AT": "generator:0@generate.chunk#4,judge:0@judge#1"},
    )
    assert first.returncode == -9, first.stderr[-3000:]
    assert first.stdout.count("[fault]") == 2
    r = inpo_here("train", "--resume", str(run), env={"INPO_KILL_AT": "learner:1@learn.step2#2"})
    assert r.returncode == 0, r.stderr[-3000:]
    faults = [json.loads(x) for x in (run / "faults.jsonl").read_text().splitlines()]
    assert [(f["iteration"], f["stage"], f["actor"], f["action"]) for f in faults] == [
        (1, "generate", "generator 0", "restarted"),
        (1, "judge", "judge 0", "restarted"),
        (3, "learn", "learner 1", "restarted"),
    ], faults
    assert all("died" in f["cause"] and f["seconds_lost"] >= 0 for f in faults)
    assert r.stdout.count("[fault]") == 1
    state = RunState.load(run / "state.json")
    assert state.info(1, "generate")["kept_prompts"] == 8  # 2 chunks of 4 were not redone
    assert not (run / "iter_1" / "generations.partial.jsonl").exists()
    steps = [json.loads(x)["step"] for x in (run / "iter_3" / "learn_metrics.jsonl").open()]
    assert steps == [1, 2] and "continuing from the step 1 checkpoint" in r.stdout
    # in memory, over a weight-update group set up anew with the restarted generators
    # (iteration 1) and learner ranks (iteration 3); the process resumed at iteration 2's
    # logps had no generators running: they start at its sync, from pi_3's directory
    assert [state.info(t, "sync")["sync_via"] for t in (1, 2, 3)] == ["memory", "files", "memory"]
    assert_same_weights(whole, run, 3)


def test_paper_reward_recipe_on_a_base_model_with_another_reference(tmp_path, ray_session):
    """configs/paper_reward.yaml: reward model, max-min pairs, ZeRO-3, three iterations,
    here on a base model without a chat template (plain string prompts) and a reference
    that is not the initial policy: pi_1 is evaluated against pi_ref before training."""
    from inpo.models.tiny import build_tiny_model, build_tiny_reward_model

    def base_model(path, seed):
        build_tiny_model(path, seed=seed)
        cfg = json.loads((path / "tokenizer_config.json").read_text())
        cfg.pop("chat_template", None)
        (path / "tokenizer_config.json").write_text(json.dumps(cfg))
        (path / "chat_template.jinja").unlink(missing_ok=True)
        return path

    policy, reference = base_model(tmp_path / "base", 1), base_model(tmp_path / "ref", 2)
    rm = build_tiny_reward_model(tmp_path / "rm", seed=3)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"Q{i}: say a word.\nA:"}) + "\n" for i in range(64))
    )
    run = tmp_path / "run"
    r = inpo_here(
        "train",
        "configs/paper_reward.yaml",
        f"model.policy={policy}",
        f"model.reference={reference}",
        f"oracle.model={rm}",
        f"data.prompts={prompts}",
        "data.prompt_field=prompt",
        *PAPER_SHRUNK,
        f"run.dir={run}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[setup] eval_init done" in r.stdout
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [0, 1, 2, 3]
    ps = [json.loads(x)["p_vs_ref"] for x in (run / "eval_init.jsonl").open()]
    assert rows[0]["win_vs_ref"] == pytest.approx(sum(ps) / len(ps))  # pi_1 against pi_ref
    assert len(set(ps)) > 1  # a real judge's P, not a constant
    init = [json.loads(x) for x in (run / "eval_init.jsonl").read_text().splitlines()]
    first = [json.loads(x) for x in (run / "iter_1" / "eval.jsonl").read_text().splitlines()]
    # iteration 1's "prev" is pi_1, not pi_ref: its P comes from comparing with pi_1's rows
    assert [r["p_vs_prev"] for r in first] != [r["p_vs_ref"] for r in first]
    assert len(init) == len(first) == 8
    pairs = [json.loads(x) for x in (run / "iter_1" / "pairs.jsonl").read_text().splitlines()]
    assert all(isinstance(p["prompt"], str) for p in pairs)


def test_lora_zero3_offload_two_iterations_resume_after_sigkill(tmp_path, ray_session):
    """LoRA with 2 ranks under ZeRO-3 with the optimizer offloaded (DeepSpeed's CPU Adam;
    under ZeRO-2, on the real model: tests/e2e/test_real_model_e2e.py): the same adapter
    trains across iterations, step checkpoints hold the adapter and its offloaded optimizer
    state, and a run SIGKILLed while learning resumes to exactly the weights of an
    uninterrupted one: copied once done, the 2-iteration run forgets iteration 2's learn
    stage, is resumed there and killed at its third step."""
    from helpers import forget_from

    lora = [*TINY_FAMILY, "learner.epochs=2", "learner.checkpoint_every=2", "model.lora.r=8"]
    lora += ["deepspeed.zero_stage=3", "learner.num_ranks=2", "deepspeed.offload_optimizer=true"]
    whole = tmp_path / "whole"
    r = inpo_here("train", *lora, "run.iterations=2", f"run.dir={whole}")
    assert r.returncode == 0, r.stderr[-3000:]
    first = json.loads((whole / "iter_1" / "learn_metrics.jsonl").read_text().splitlines()[0])
    assert abs(first["margin"]) < 1e-5
    for t in (1, 2):
        assert (whole / f"iter_{t}" / "policy" / "adapter" / "adapter_model.safetensors").exists()
    cut, whole = whole, forget_from(whole, 2, "learn", keep=tmp_path / "whole_kept")
    r = inpo_train("--resume", str(cut), crash_at="learn.step3", join=ray_session)
    assert r.returncode == -9, r.stderr[-3000:]
    r = inpo_here("train", "--resume", str(cut))
    assert r.returncode == 0, r.stderr[-3000:]
    # resumed from the step-2 checkpoint, not from zero: each step's row once, in order
    assert "continuing from the step 2 checkpoint" in r.stdout
    steps = [json.loads(x)["step"] for x in (cut / "iter_2" / "learn_metrics.jsonl").open()]
    assert steps == sorted(set(steps)) == list(range(1, len(steps) + 1))
    a, b = final_weights(whole), final_weights(cut)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    adapter = "iter_2/policy/adapter/adapter_model.safetensors"
    x, y = load_file(str(whole / adapter)), load_file(str(cut / adapter))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


ORACLE = """
import os

def prefer_vowels(prompts, a, b):
    if os.path.exists(os.environ["ORACLE_FAIL_FLAG"]):
        raise RuntimeError("judge service is down")
    score = lambda s: sum(c in "aeiou" for c in s) / max(len(s), 1)
    return [1.0 if score(x) > score(y) else 0.0 if score(x) < score(y) else 0.5
            for x, y in zip(a, b)]
"""


def test_an_oracle_that_raises_stops_cleanly_and_resumes(tmp_path, monkeypatch, ray_session):
    (tmp_path / "my_oracle.py").write_text(ORACLE)  # a python oracle runs in the driver
    monkeypatch.syspath_prepend(str(tmp_path))
    flag = tmp_path / "fail"
    flag.touch()
    env = {"ORACLE_FAIL_FLAG": str(flag)}
    run = tmp_path / "run"
    args = [
        *SMALL,
        "run.iterations=1",
        f"run.dir={run}",
        "oracle.backend=python",
        "oracle.callable=my_oracle:prefer_vowels",
    ]
    r = inpo_here("train", *args, env=env)
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()[-1]
    assert "my_oracle:prefer_vowels" in err and "judge service is down" in err
    gen = run / "iter_1" / "generations.jsonl"
    mtime = gen.stat().st_mtime_ns
    flag.unlink()
    r = inpo_here("train", "--resume", str(run), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert gen.stat().st_mtime_ns == mtime
    assert (run / "iter_1" / "policy" / "config.json").exists()


@pytest.mark.parametrize(
    "setting, want",
    [
        ("run.num_cpus=3", "run.num_cpus = 3: the Ray cluster this run joins has 12 CPUs"),
        ("run.num_gpus=2", "run.num_gpus = 2: the Ray cluster this run joins has 0 GPUs"),
        ("run.ray_address=127.0.0.1:9", "run.ray_address = '127.0.0.1:9': this process is"),
    ],
)
def test_a_setting_the_joined_cluster_would_ignore_is_named(setting, want, tmp_path, ray_session):
    """Ray already running in this process (as here, the tests' shared cluster): a run whose
    settings size or name another cluster stops before any actor starts."""
    r = inpo_here("train", *SMALL, setting, f"run.dir={tmp_path / 'run'}")
    assert r.returncode == 1 and want in r.stderr.strip().splitlines()[-1], r.stderr[-2000:]


@pytest.mark.parametrize("case", ["empty", "malformed", "missing_model", "unknown_key"])
def test_bad_input_is_named_and_the_run_dir_stays_resumable(case, tmp_path, ray_session):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say {i}"}) + "\n" for i in range(80)))
    run = tmp_path / "run"
    args = [*SMALL, f"run.dir={run}", f"data.prompts={prompts}"]
    if case == "empty":
        prompts.write_text("")
        want = f"{prompts}: no prompts"
    elif case == "malformed":
        lines = prompts.read_text().splitlines()
        lines[4] = '{"prompt": 17}'
        prompts.write_text("\n".join(lines) + "\n")
        want = f"{prompts}: row 5: field 'prompt'"
    elif case == "missing_model":
        args.append(f"model.policy={tmp_path / 'nope'}")
        want = "model.policy"
    else:
        args.append("learner.lr_max=3")
        want = "learner.lr_max = 3: unknown field"
    r = inpo_here("train", *args)
    assert r.returncode == (2 if case == "unknown_key" else 1), r.stderr[-2000:]
    assert want in r.stderr.strip().splitlines()[-1]
    if case == "empty":
        assert json.loads((run / "state.json").read_text())["done"] == {}
        r = inpo_here("train", "--resume", str(run), "run.iterations=0")
        assert r.returncode == 2 and "run.iterations = 0" in r.stderr  # overrides re-checked
    if case == "malformed":  # nothing lost: once the file is fixed the same run goes on
        prompts.write_text("".join(json.dumps({"prompt": f"Say {i}"}) + "\n" for i in range(80)))
        r = inpo_train("--resume", str(run), crash_at="generate", join=ray_session)
        assert r.returncode == -9, r.stderr[-2000:]
        assert json.loads((run / "state.json").read_text())["running"]["stage"] == "generate"
