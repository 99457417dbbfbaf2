"""The stages of a run and the roles they use: the one table the trainer walks (one method
per stage), the fleet starts actors from, colocation wakes and sleeps by, and the memory
model sizes every GPU in.

    setup (t = 0)   eval_ref    pi_ref's responses to the held-out prompts
                    eval_init   pi_1's, judged against pi_ref's (only when pi_1 != pi_ref)
    iteration t     generate    K samples per prompt from pi_t
                    judge       the oracle + pairing -> labelled (y_w, y_l) pairs
                    logps       log pi_ref and log pi_t of every pair, cached
                    learn       epochs of the loss (step checkpoints)
                    save        pi_{t+1} as a Hugging Face directory
                    sync        pi_{t+1} into the generators, verified (hash + probe)
                    eval        pi_{t+1}'s held-out responses, judged against pi_ref and pi_t
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """The actors of a run; each wraps one engine."""

    GENERATOR = "generator"  # vLLM engines holding pi_t
    JUDGE = "judge"  # the oracle: its model actors (pairpm, reward) or an in-driver function
    LEARNER = "learner"  # DeepSpeed ranks


@dataclass(frozen=True)
class Stage:
    name: str
    #: the roles it calls, one group after another; in a colocated run each group is
    #: awake alone, so one vLLM engine at a time holds most of a GPU
    phases: tuple[tuple[Role, ...], ...]
    outputs: tuple[str, ...]  # what it writes: under iter_<t>/ (setup stages: the run dir)

    @property
    def roles(self) -> tuple[Role, ...]:
        return tuple(dict.fromkeys(r for phase in self.phases for r in phase))


G, J, L = (Role.GENERATOR,), (Role.JUDGE,), (Role.LEARNER,)
SETUP = (
    Stage("eval_ref", (G,), ("eval_ref.jsonl",)),
    Stage("eval_init", (G, J), ("eval_init.jsonl",)),  # generate, then judge
)
ITERATION = (
    Stage("generate", (G,), ("generations.jsonl",)),
    Stage("judge", (J,), ("pairs.jsonl",)),
    Stage("logps", (L,), ("logps.safetensors",)),
    Stage("learn", (L,), ("learn_metrics.jsonl",)),
    Stage("save", (L,), ("policy",)),
    Stage("sync", (G,), ()),
    Stage("eval", (G, J), ("eval.jsonl",)),
)
ALL = SETUP + ITERATION
BY_NAME = {s.name: s for s in ALL}
#: the names of one iteration's stages, in order
STAGES = tuple(s.name for s in ITERATION)


def stages_of(iteration: int) -> tuple[Stage, ...]:
    return SETUP if iteration == 0 else ITERATION


def uses(stage: str) -> tuple[Role, ...]:
    """The roles ``stage`` calls."""
    return BY_NAME[stage].roles
