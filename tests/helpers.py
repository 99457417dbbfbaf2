"""Helpers the tests import (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

#: One short iteration without eval: the size of the cluster and Slurm tests' runs, whose
#: subject is placement and processes, not learning.
SHORT_RUN = [
    "run.iterations=1",
    "data.eval_size=0",
    "data.prompts_per_iteration=16",
    "generation.num_samples=4",
    "generation.max_new_tokens=12",
    "learner.global_batch_size=4",
    "learner.micro_batch_size=1",
    "learner.epochs=1",
    "learner.checkpoint_every=0",
]


def write_pairs(path: Path, n: int, seed: int = 0, chat: bool = True) -> Path:
    """Pairs where the chosen response is vowels and the rejected one consonants."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            text = f"Write something, number {i}."
            prompt = [{"role": "user", "content": text}] if chat else text
            chosen = "".join(rng.choice("aeiou ") for _ in range(rng.randint(4, 12)))
            rejected = "".join(rng.choice("xzqkvbd") for _ in range(rng.randint(4, 12)))
            f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
    return path


def hf_logp(model_dir: Path, ids: list[int], prompt_len: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    from inpo.algo.loss import sequence_logps

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    x = torch.tensor([ids])
    mask = torch.zeros(1, len(ids) - 1, dtype=torch.long)
    mask[0, prompt_len - 1 :] = 1
    with torch.no_grad():
        logits = model(input_ids=x).logits
    return sequence_logps(logits[:, :-1], x[:, 1:], mask).item()


def inpo_cli(*args: str, env: dict | None = None, timeout: int = 600, **run):
    """`python -m inpo.cli ARGS` in a fresh process, as a user runs it (output captured)."""
    return subprocess.run(
        [sys.executable, "-m", "inpo.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or {**os.environ, "PYTHONUNBUFFERED": "1"},
        **run,
    )


def start_session_ray(num_cpus: int) -> str:
    """A Ray cluster of this process's own (never one that `ray start` left running on the
    machine, which a plain ray.init() would join); returns its address."""
    import ray

    from inpo.plan.cluster import QUIET_ENV

    os.environ.update({k: v for k, v in QUIET_ENV.items() if k not in os.environ})
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": dict(QUIET_ENV)},
    )
    return ray.get_runtime_context().gcs_address


@contextlib.contextmanager
def environ(**env: str) -> Iterator[None]:
    """os.environ with ``env`` on top, for the duration."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def inpo_here(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`inpo ARGS` in this process, on the session's Ray cluster (the caller asks for the
    `ray_session` fixture): the CLI's own code path, parsing and error handling included,
    without a process, a Ray or a driver import of its own. Returns what `inpo_cli` does:
    the exit code and what the command printed."""
    from inpo.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with environ(**(env or {})), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    result = subprocess.CompletedProcess(["inpo", *args], code, out.getvalue(), err.getvalue())
    sys.stdout.write(result.stdout)  # shown by pytest when the test fails
    sys.stderr.write(result.stderr[-3000:])
    return result


def inpo_train(
    *args: str, crash_at: str | None = None, join: str | None = None, extra_env=None, timeout=600
):
    """`inpo train ARGS` in a process of its own; ``crash_at`` SIGKILLs it there
    (inpo.faults); ``join`` is a Ray cluster's address to run on (run.ray_address) instead
    of a local cluster of its own."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    env.pop("INPO_CRASH_AT", None)
    if crash_at:
        env["INPO_CRASH_AT"] = crash_at
    if join:
        args = (*args, f"run.ray_address={join}")
    # A new session, so the kill reaches Ray and vLLM children too.
    return inpo_cli("train", *args, env=env, timeout=timeout, start_new_session=True)


def forget_from(run: Path, t: int, stage: str, keep: Path) -> Path:
    """Copy the finished ``run`` to ``keep`` (returned), then make ``run`` forget iteration
    ``t``'s ``stage`` and the stages after it (`RunState.undo_from`, as a resumed run
    forgets a damaged stage): resumed, it redoes them from the files of the stages before,
    as a run stopped just before ``stage`` would. In place, as a run's files are where it
    wrote them (a cached file's inputs name its models' paths). ``run`` must have ended at
    iteration ``t``."""
    from inpo.run.state import RunState

    shutil.copytree(run, keep)
    RunState.load(run / "state.json").undo_from(t, stage)
    return keep


def final_weights(run: Path, t: int = 2) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / f"iter_{t}" / "policy" / "model.safetensors"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A localhost port held bound but never listening: a connect is refused, and no other
    process (the other test worker's Ray or vLLM) can take the port meanwhile, which a port
    merely found free cannot promise."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@contextlib.contextmanager
def openai_server(model_dir: Path, log: Path, *engine_args: str) -> Iterator[str]:
    """A real vLLM OpenAI server of model_dir on 127.0.0.1; yields its /v1 URL."""
    import pytest
    import requests

    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir)]
    cmd += ["--port", str(port), "--host", "127.0.0.1", "--dtype", "float32"]
    # eager, as inpo's own CPU engines: vLLM-CPU otherwise compiles with inductor at start
    cmd += ["--max-model-len", "1024", "--enforce-eager", *engine_args]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "VLLM_LOGGING_LEVEL": "WARNING"}
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"vLLM server did not come up:\n{log.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/models", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def eos_is_not_end_of_turn(model_dir: Path) -> Path:
    """Make a tiny model's EOS <|endoftext|> while its chat template still closes turns with
    <|im_end|>, which no config lists (as Llama-3-8B's base files list only
    <|end_of_text|>): the end of turn is then a stop token only if inpo passes it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.eos_token = "<|endoftext|>"
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.save_pretrained(model_dir)
    for name in ("config.json", "generation_config.json"):
        path = Path(model_dir) / name
        if path.exists():
            config = json.loads(path.read_text())
            path.write_text(json.dumps({**config, "eos_token_id": tok.eos_token_id}))
    return Path(model_dir)


def run_ensure(cache: Path, **popen) -> subprocess.Popen:
    """`ensure_smollm2(cache)` in a process of its own, which prints RESULT, the directory
    and whether it imported torch and transformers."""
    code = (
        "import sys; from pathlib import Path; from inpo.models.smollm2 import ensure_smollm2; "
        "p = ensure_smollm2(Path(sys.argv[1])); "
        "print('RESULT', p, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    return subprocess.Popen([sys.executable, "-c", code, str(cache)], text=True, **popen)
