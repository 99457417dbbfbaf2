"""launch/slurm.sbatch under a real Slurm: two nodes of 4 GPUs each (GRES of type h100),
as tests/slurm_local.sh sets them up on this one host. Skipped where no slurmctld answers.

One job runs the quickstart model on run.simulate_gpus to the end; a second, the same, is
requeued (`scontrol requeue`) in its logps stage (generate and judge done: the learn stage
that follows takes a second here, too short to hit), runs again from the top of the script,
resumes at logps without redoing what was done and ends with the first job's weights.
Both jobs' logs must show both nodes and all 8 GPUs joined before the run started, and no
Ray process of a job may outlive it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import SHORT_RUN, final_weights

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).parents[2]
NODES, GPUS_PER_NODE = 2, 4

ARGS = [
    "configs/quickstart.yaml",
    *SHORT_RUN,
    "learner.num_ranks=2",
    "run.colocate=false",
    "run.simulate_gpus=true",
    "run.tensorboard=false",
]


def no_slurm() -> str | None:
    """Why the test cannot run here, or None."""
    if shutil.which("sbatch") is None:
        return "no Slurm here (tests/slurm_local.sh sets one up)"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "scontrol ping timed out"
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return "no slurmctld answers (tests/slurm_local.sh starts one)"
    nodes = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N %G"], capture_output=True, text=True, timeout=20
    ).stdout.split("\n")
    spec = re.compile(rf"gpu:(\w+:)?{GPUS_PER_NODE}\b")
    if len({line.split()[0] for line in nodes if spec.search(line)}) < NODES:
        return f"the Slurm cluster has no {NODES} nodes of {GPUS_PER_NODE} GPUs"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    if (why := no_slurm()) is not None:
        pytest.skip(why)


def submit(run: Path, log: Path) -> str:
    cmd = ["sbatch", "--parsable", f"--nodes={NODES}", f"--gpus-per-node=h100:{GPUS_PER_NODE}"]
    cmd += ["--cpus-per-task=2", "--time=30", f"--output={log}", "--job-name=inpo-e2e"]
    cmd += [str(ROOT / "launch" / "slurm.sbatch"), *ARGS, f"run.dir={run}"]
    env = {**os.environ, "VENV": str(Path(sys.executable).parents[1])}
    # this checkout's inpo in the driver too (Ray's workers import it from the submit
    # directory), also where the virtualenv's editable install points at another checkout
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env["INPO_RAY_JOIN_TIMEOUT"] = "180"
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]


def job(job_id: str) -> dict[str, str]:
    """scontrol's record of the job (kept MinJobAge after it ends)."""
    text = subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30
    ).stdout
    return dict(re.findall(r"(\w+)=(\S*)", text))


def wait_done(job_id: str, log: Path, timeout: float = 900) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    running = ("PENDING", "RUNNING", "REQUEUED", "COMPLETING", None)
    while (info := job(job_id)).get("JobState") in running:
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job_id])
            pytest.fail(f"job {job_id} did not end: {log.read_text()[-3000:]}")
        time.sleep(2)
    return info


def no_ray_left(job_id: str) -> None:
    """The job's Ray processes (its temp dir is on their command lines) ended with it."""
    deadline = time.monotonic() + 60
    while True:
        left = subprocess.run(
            ["pgrep", "-a", "-f", f"/tmp/inpo-ray-{job_id}"], capture_output=True, text=True
        ).stdout.strip()
        if not left:
            return
        assert time.monotonic() < deadline, f"job {job_id}'s Ray processes outlived it:\n{left}"
        time.sleep(1)


def joined(text: str) -> list[str]:
    return re.findall(
        rf"ray cluster at \S+: {NODES} of {NODES} nodes, {NODES * GPUS_PER_NODE} of "
        rf"{NODES * GPUS_PER_NODE} GPUs after \d+s",
        text,
    )


def done(run: Path) -> dict:
    """Iteration 1's stages the run has marked done."""
    path = run / "state.json"
    return json.loads(path.read_text())["done"].get("1", {}) if path.exists() else {}


def save_hash(run: Path) -> str:
    return json.loads((run / "state.json").read_text())["done"]["1"]["save"]["weights_sha256"]


@pytest.mark.timeout(1500)  # two jobs in turn: 9 min 14 s on 2 cores shared with other runs
def test_a_slurm_job_runs_and_a_requeued_one_resumes_to_the_same_weights(slurm, tmp_path):
    t0 = time.monotonic()
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    log_whole, log_cut = tmp_path / "whole.out", tmp_path / "cut.out"

    first = submit(whole, log_whole)
    info = wait_done(first, log_whole)
    text = log_whole.read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text[-3000:]
    assert len(joined(text)) == 1, text[-3000:]
    no_ray_left(first)
    took = time.monotonic() - t0
    print(f"job {first}: completed in {took:.0f}s; {joined(text)[0]}")
    nodes = {rec["node"] for rec in json.loads((whole / "placement.json").read_text())}
    print(f"actors on {len(nodes)} Ray nodes")

    second = submit(cut, log_cut)
    deadline = time.monotonic() + 600
    while "judge" not in done(cut):
        assert job(second).get("JobState") in ("PENDING", "RUNNING"), log_cut.read_text()[-3000:]
        assert time.monotonic() < deadline, log_cut.read_text()[-3000:]
        time.sleep(0.2)
    r = subprocess.run(["scontrol", "requeue", second], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    t1 = time.monotonic()
    # Slurm holds a requeued job for about 2 minutes (its BeginTime) before it may start
    # again; once it is pending, let it start at once.
    while (info := job(second)).get("JobState") != "PENDING" or info.get("Restarts") != "1":
        assert time.monotonic() - t1 < 120, info
        time.sleep(1)
    subprocess.run(["scontrol", "update", f"JobId={second}", "StartTime=now"], check=True)
    info = wait_done(second, log_cut)
    text = log_cut.read_text()  # both runs of the job: --open-mode=append
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", text[-3000:]
    assert info["Restarts"] == "1", info
    assert len(joined(text)) == 2, text[-3000:]  # the cluster was whole both times
    assert f"{cut}/state.json exists (job {second}, restart 1): inpo train --resume {cut}" in text
    resumed = f"resuming {cut}: continuing at iteration 1, stage logps"
    assert resumed in text, text[-3000:]
    after = text.split(resumed)[1]
    assert "generate done" not in after and "judge done" not in after  # not redone
    assert "[iter 1] logps done" in after and "[iter 1] learn done" in after
    no_ray_left(second)
    print(f"job {second}: requeued in logps, completed {time.monotonic() - t1:.0f}s later")

    assert save_hash(cut) == save_hash(whole)
    a, b = final_weights(whole, 1), final_weights(cut, 1)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    print(f"same weights: sha256 {save_hash(whole)[:16]}; in all {time.monotonic() - t0:.0f}s")
