"""The memory estimate (inpo.plan.memory) against published figures and torch's own counts."""

from __future__ import annotations

import pytest

from inpo.config import load_config
from inpo.errors import InpoError
from inpo.plan.memory import (
    ADAM_BYTES,
    LLAMA3_8B,
    SHIPPED,
    GiB,
    Shape,
    check_memory,
    estimate,
    format_estimate,
    model_shape,
)

P8B = 8_030_261_248  # LLaMA-3-8B, as published (Meta's model card: 8.03B)


def paper(*overrides: str):
    return load_config("configs/paper_pairpm.yaml", list(overrides))


def learner_parts(est, stage: str = "learn", rank: int = 0) -> dict[str, float]:
    for row in est.rows:
        for a in row.actors:
            if (a.role, a.index) == ("learner", rank):
                return dict(a.parts(stage))
    raise AssertionError("no learner rank")


def test_llama3_8b_parameters_and_kv_bytes():
    assert LLAMA3_8B.params == P8B
    assert LLAMA3_8B.kv_bytes_per_token(2) == 131072  # 2 x 32 layers x 8 heads x 128 x 2 bytes
    rm = SHIPPED["sfairXC/FsfairX-LLaMA3-RM-v0.1"]
    assert rm.params == P8B - 128256 * 4096 + 4096  # a 1-output score head, no LM head


def test_zero3_full_fine_tuning_is_16_bytes_per_parameter_over_the_ranks():
    for ranks in (1, 4, 8):
        cfg = paper(f"learner.num_ranks={ranks}", "learner.global_batch_size=128")
        parts = learner_parts(estimate(cfg, [8], 80 * GiB))
        states = parts["weights"] + parts["gradients"] + parts["optimizer"]
        assert states == pytest.approx(16 * P8B / ranks)
        rest = {"activations", "logits", "ZeRO-3 gathered module", "CUDA context"}
        assert set(parts) - {"weights", "gradients", "optimizer"} == rest
        assert all(parts[k] > 0 for k in rest)


def test_zero_stages_partition_optimizer_then_gradients_then_weights():
    got = {}
    for stage in (0, 1, 2, 3):
        parts = learner_parts(estimate(paper(f"deepspeed.zero_stage={stage}"), [8], 80 * GiB))
        got[stage] = (parts["weights"], parts["gradients"], parts["optimizer"])
    full, quarter = 2 * P8B, 2 * P8B / 4
    assert got[0] == (full, full, 12 * P8B)
    assert got[1] == (full, full, 3 * P8B)
    assert got[2] == (full, quarter, 3 * P8B)
    assert got[3] == (quarter, quarter, 3 * P8B)


def test_fp32_training_is_4_plus_4_plus_8_bytes():
    parts = learner_parts(
        estimate(
            paper("model.dtype=float32", "learner.num_ranks=1", "learner.global_batch_size=128"),
            [8],
            80 * GiB,
        )
    )
    assert ADAM_BYTES[4] == 8
    assert parts["weights"] + parts["gradients"] + parts["optimizer"] == 16 * P8B


def test_lora_drops_the_base_gradients_and_optimizer_state():
    # r=16 on every linear of LLaMA-3-8B: 41,943,040 trainable (what peft reports)
    adapter = LLAMA3_8B.lora_params(16, "all-linear")
    assert adapter == 41_943_040
    full = learner_parts(estimate(paper(), [8], 80 * GiB))
    lora = learner_parts(estimate(paper("model.lora.r=16"), [8], 80 * GiB))
    assert lora["gradients"] == pytest.approx(2 * adapter / 4)
    assert lora["optimizer"] == pytest.approx(12 * adapter / 4)
    assert lora["weights"] == pytest.approx(2 * (P8B + adapter) / 4)
    assert lora["optimizer"] < full["optimizer"] / 100
    est = estimate(paper("model.lora.r=16"), [8], 80 * GiB)
    assert dict(est.checkpoint) == {"adapter": 2 * adapter, "adapter optimizer": 12 * adapter}


def test_lora_parameter_count_matches_peft():
    torch = pytest.importorskip("torch")
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = LlamaConfig(
        vocab_size=101,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
    )
    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(hf), LoraConfig(r=4, target_modules="all-linear"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert Shape.from_config(hf.to_dict()).lora_params(4, "all-linear") == trainable


def test_gradient_checkpointing_reduces_activations():
    on = learner_parts(estimate(paper("learner.gradient_checkpointing=true"), [8], 80 * GiB))
    off = learner_parts(estimate(paper("learner.gradient_checkpointing=false"), [8], 80 * GiB))
    assert on["activations"] < off["activations"] / 10
    tokens = 2 * 1 * 3072
    # without: 32 layers x 2 bytes x (6 h + 2 kv + 4 i) per token
    assert off["activations"] == 32 * tokens * 2 * (6 * 4096 + 2 * 1024 + 4 * 14336)


@pytest.mark.parametrize(
    "kind, extra",
    [
        ("llama", {}),
        ("llama", {"tie_word_embeddings": True}),
        ("qwen2", {}),
        ("reward", {"num_labels": 1}),
    ],
)
def test_parameter_count_matches_torch(kind, extra):
    pytest.importorskip("torch")
    import transformers as tf

    sizes = dict(
        vocab_size=101,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    if kind == "qwen2":
        config, cls = tf.Qwen2Config(**sizes, **extra), tf.Qwen2ForCausalLM
    else:
        config = tf.LlamaConfig(**sizes, head_dim=32, **extra)
        cls = tf.LlamaForSequenceClassification if kind == "reward" else tf.LlamaForCausalLM
        config.architectures = [cls.__name__]
    model = cls(config)
    counted = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    assert Shape.from_config(config.to_dict()).params == counted


def test_shapes_from_names_dirs_and_errors(tmp_path):
    assert model_shape("/models/LLaMA3-SFT", "model.policy").params == P8B
    assert model_shape("RLHFlow/pair-preference-model-LLaMA3-8B", "oracle.model").params == P8B
    assert model_shape("/x/FsfairX-LLaMA3-RM-v0.1", "oracle.model").score_head == 1
    (tmp_path / "config.json").write_text(
        '{"hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 64, '
        '"num_attention_heads": 1, "vocab_size": 10, "tie_word_embeddings": true}'
    )
    assert (
        model_shape(str(tmp_path), "model.policy").params
        == 10 * 64 + 4 * 64 * 64 + 3 * 64 * 64 + 3 * 64
    )
    with pytest.raises(InpoError, match=r"^oracle.model = '/models/unknown-judge': no config.json"):
        model_shape("/models/unknown-judge", "oracle.model")


def test_paper_layout_fits_8x80_and_is_refused_on_40gb():
    cfg = paper()
    est = estimate(cfg, [8], 80 * GiB)
    roles = [[(a.role, a.index) for a in r.actors] for r in est.rows]
    assert roles == [[("learner", i)] for i in range(4)] + [
        [("generator", 0)],
        [("generator", 1)],
        [("judge", 0)],
        [("judge", 1)],
    ]
    check_memory(cfg, [8], 80 * GiB)  # fits
    with pytest.raises(InpoError) as e:
        check_memory(cfg, [8], 40 * GiB)
    msg = str(e.value)
    assert "\n" not in msg and "run.check_memory=false" in msg
    assert "GPU 0 (learner 0)" in msg and "logps stage" in msg and "more than its 40.0 GiB" in msg
    check_memory(paper("run.check_memory=false"), [8], 40 * GiB)  # the user knows better
    text = format_estimate(est, cfg)
    assert "8,030,261,248 parameters" in text and "assumptions:" in text


def test_vllm_without_room_for_one_sequence_is_refused():
    with pytest.raises(InpoError, match="vLLM's share"):
        check_memory(paper("generation.gpu_memory_utilization=0.19"), [8], 80 * GiB)


def test_shared_gpus_sum_what_each_gpu_holds():
    cfg = paper("learner.num_ranks=2", "oracle.num_actors=1")
    est = estimate(cfg, [2], 80 * GiB)
    assert len(est.rows) == 2
    for row in est.rows:
        roles = sorted(a.role for a in row.actors)
        assert roles.count("learner") == 1
        gen = [a for a in est.rows[0].actors + est.rows[1].actors if a.role == "generator"][0]
        assert sum(b for _, b in gen.persistent) == pytest.approx(0.35 * 80 * GiB)
        assert row.total("learn") == pytest.approx(sum(a.total("learn") for a in row.actors))


def test_offload_moves_optimizer_state_to_host_ram():
    est = estimate(paper("deepspeed.offload_optimizer=true"), [8], 80 * GiB)
    assert "optimizer" not in learner_parts(est)
    assert est.cpu_by_node[0]["learn"] == pytest.approx(12 * P8B)  # 4 ranks x 12 P / 4
    assert est.cpu_by_node[0]["save"] == pytest.approx(12 * P8B + 2 * P8B)  # + rank 0's gather


def test_tensor_parallel_generator_is_one_row_of_two_gpus():
    est = estimate(
        paper("generation.tensor_parallel_size=2", "generation.num_generators=1"), [8], 80 * GiB
    )
    labels = [r.label for r in est.rows]
    assert "GPU 4-5" in labels
    gen = next(r for r in est.rows if r.label == "GPU 4-5").actors[0]
    assert dict(gen.persistent)["vLLM weights"] == pytest.approx(P8B)  # 2 bytes / 2 GPUs


def test_inpo_plan_prints_the_table(capsys):
    from inpo.cli import main

    main(
        [
            "plan",
            "configs/paper_reward.yaml",
            "learner.num_ranks=2",
            "--gpus",
            "8",
            "--gpus-per-node",
            "4",
            "--gpu-memory",
            "80",
        ]
    )
    out = capsys.readouterr().out
    assert "GPUs: 8 x 80.0 GiB (GPUs per node: 4, 4)" in out
    assert "7,504,928,768 parameters" in out  # the reward model: score head, no LM head
    assert "host RAM, node 1" in out and "step checkpoint: 104.7 GiB" in out
    assert "colocated instead (run.colocate=true)" in out
    assert "GPU 7     learner 7 + generator 7 + judge 7" in out
    assert "colocated / split:" in out and "time assumptions:" in out


def test_iteration_time_split_vs_colocated():
    from inpo.plan.cost import iteration_seconds, layouts, phase_flops

    cfg = paper()
    k, prompts = cfg.generation.num_samples, cfg.data.prompts_per_iteration
    lp, lr = cfg.data.max_prompt_tokens, cfg.generation.max_new_tokens
    flops = phase_flops(cfg, P8B // 2, P8B // 2)
    # the tournament's 3K/2 - 1 comparisons per prompt, both orders, prompt + two responses
    assert flops["judge"] == pytest.approx(
        2 * (P8B // 2) * prompts * (3 * k // 2 - 1) * 2 * (lp + 2 * lr)
    )
    split, colocated = layouts(cfg, 8, P8B, P8B)
    assert split.gpus == {"generate": 2, "judge": 2, "learn": 4}
    a, b = (iteration_seconds(flops, lay, "h100") for lay in (split, colocated))
    # every phase on 8 GPUs instead of its own 2, 2 and 4
    assert b["judge"] == pytest.approx(a["judge"] / 4) and b["learn"] == pytest.approx(
        a["learn"] / 2
    )
    assert b["total"] == pytest.approx(b["generate"] + b["judge"] + b["learn"] + colocated.moves_s)
    assert 0 < colocated.moves_s < 60 and b["total"] < a["total"]


def test_inpo_plan_of_a_layout_the_batch_cannot_take_is_one_line(capsys):
    from inpo.cli import main

    with pytest.raises(SystemExit) as e:
        main(["plan", "configs/quickstart.yaml", "--gpus", "8"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("run.colocate on 8 GPUs: ") and "learner.global_batch_size = 16" in err
    assert "pydantic" not in err and "[type=" not in err
