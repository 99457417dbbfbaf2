"""inpo: Iterative Nash Policy Optimization (Zhang et al., ICLR 2025) with Ray, vLLM and
DeepSpeed. The folders are the roles of the data flow; layers import downward only:

    core         stages.py (the stage table and the roles), rows.py (what stages pass on),
                 config.py, data.py, prompts.py, durable.py, errors.py, faults.py, models/
    algo/        pure math: the losses beside the paper's equations, the Nash harness
    plan/        where actors run and what they hold: placement, Ray, memory, cost, colocation
    engines/     every vLLM call
    generation/  stage generate and the vLLM generator actors (verified weight sync)
    judging/     stage judge: the oracle interface and backends, pairing
    learning/    stages logps, learn, save and the DeepSpeed learner ranks
    run/         the driver: `inpo train`, the Trainer, the fleet of actors, state, eval, report
    cli.py       `inpo <command>`

docs/contributing.md has a line for every module.
"""
