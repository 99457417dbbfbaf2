"""inpo: Iterative Nash Policy Optimization (Zhang et al., ICLR 2025) with Ray, vLLM and
DeepSpeed. A map of the package, in the order data flows through one iteration:

Driver side (one process; `inpo train` = pipeline.Trainer walks the stage table):
    config.py     the typed config: one schema, YAML + dotted overrides, validated
    data.py       prompt and pair files, prompt splits, tokenisation
    prompts.py    the builtin prompt sets (quickstart, ifeval), generated in code
    state.py      the stage table (setup, then generate judge logps learn save sync eval)
                  and the run state (state.json)
    pipeline.py   the loop: one method per stage, resume, validation of done outputs
    generate.py   stage: K samples per prompt (through rollout/)
    judge.py      stage: oracle + pairing -> labelled pairs (through oracle/)
    learn.py      stages logps, learn, save (through learner/); also `inpo learn`
    evaluate.py   stage eval: win rates with intervals
    answer.py     `inpo answer`: benchmark answer files (AlpacaEval, Arena-Hard)
    report.py     the iteration table, PNG, TensorBoard / W&B
    durable.py    atomic, fsynced writes and checksums

Pure math (no Ray, vLLM or DeepSpeed; unit-tested in milliseconds):
    loss.py       the INPO loss beside the paper's equation, IPO/DPO, soft labels
    pairing.py    tournament / round robin / random / disjoint pairs, and labels
    game.py       exact INPO dynamics on preference games (the Nash harness)
    placement.py  which actor gets which GPUs

Actor packages (each actor wraps one engine; actors.py is the one group base):
    rollout/      vLLM generators and verified weight sync
    learner/      DeepSpeed ranks: cached log-probs, training steps, checkpoints
    oracle/       P(a > b | x): synthetic, pair-PM, reward model, HTTP judge, Python
    models/       builtin models (tiny, SmolLM2), dtypes, weight hashes
"""
