"""The launch scripts' pieces, in seconds: launch/ray_cluster.sh's functions (GPU and CPU
counts, the node's address, ports, `ray start` arguments, the wait for the nodes) and
launch/slurm.sbatch's (a fresh run or a resumed one, the srun steps), run by bash with fake
`srun`, `scontrol`, `inpo` and network tools where needed. The real thing, a two-node Slurm
on this host: tests/e2e/test_slurm_e2e.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import refused_port

ROOT = Path(__file__).parents[2]
SCRIPTS = ["launch/ray_cluster.sh", "launch/slurm.sbatch", "tests/slurm_local.sh"]
SCRIPTS += [str(p.relative_to(ROOT)) for p in (ROOT / "launch").glob("*.sh")]


def clean_env(**env: str) -> dict[str, str]:
    """This process's environment without what the scripts read (the suite may itself run
    inside a Slurm job), plus ``env``."""
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "INPO_", "RAY_")) and k != "CUDA_VISIBLE_DEVICES"
    }
    return {**keep, "VENV": str(Path(sys.executable).parents[1]), **env}


def bash(script: str, *, bin_dir: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """``script`` after sourcing both launch scripts (their functions, not their main)."""
    e = clean_env(**env)
    if bin_dir is not None:
        e["PATH"] = f"{bin_dir}:{e['PATH']}"
    src = "source launch/ray_cluster.sh; source launch/slurm.sbatch; "
    return subprocess.run(
        ["bash", "-c", src + script], cwd=ROOT, env=e, capture_output=True, text=True, timeout=60
    )


def out(script: str, **kw) -> str:
    r = bash(script, **kw)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def fake(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(0o755)


@pytest.mark.parametrize(
    "spec, n",
    [
        ("8", 8),
        ("h100:8", 8),
        ("gpu:h100:8", 8),
        ("gpu:8", 8),
        ("h100:4,a100:2", 6),
        ("gpu:h100:8(IDX:0-7)", 8),
        ("gpu:a100:2(IDX:0,2)", 2),
        ("", 0),
    ],
)
def test_gpu_counts_in_slurms_forms(spec, n):
    assert out(f"parse_gpus '{spec}'") == str(n)


def test_a_gpu_count_it_cannot_read_is_one_line_and_fails():
    r = bash("parse_gpus h100:many")
    assert r.returncode == 1
    assert r.stderr.strip() == "error: cannot read a GPU count from 'h100:many'"
    # as main runs it: no `ray start` with a wrong count
    r = bash('args=$(head_args); echo "ray start $args"', SLURM_GPUS_PER_NODE="h100:lots")
    assert r.returncode == 1 and "ray start" not in r.stdout, r.stdout


def test_the_nodes_own_gpu_count_comes_first():
    assert out("gpu_count", SLURM_GPUS_PER_NODE="h100:8", SLURM_GPUS_ON_NODE="4") == "4"
    assert out("gpu_count", SLURM_GPUS_PER_NODE="h100:8") == "8"
    assert out("gpu_count", SLURM_GPUS_PER_NODE="h100:8", INPO_NUM_GPUS="2") == "2"
    assert out("gpu_count", CUDA_VISIBLE_DEVICES="0,1,3") == "3"
    # the cluster's total: per node x nodes, or the job's --gpus
    assert out("total_gpus 2", SLURM_GPUS_PER_NODE="h100:4") == "8"
    assert out("total_gpus 2", SLURM_GPUS="h100:6", SLURM_GPUS_ON_NODE="3") == "6"


def test_cpus_are_the_steps_share_not_the_hosts():
    assert out("cpu_count", SLURM_CPUS_PER_TASK="3", SLURM_CPUS_ON_NODE="64") == "3"
    assert out("cpu_count", SLURM_CPUS_ON_NODE="5") == "5"
    assert out("cpu_count") == str(os.cpu_count())
    assert out("cpu_count", SLURM_CPUS_PER_TASK="3", INPO_NUM_CPUS="7") == "7"


def test_ports_come_from_the_job_id_and_two_jobs_never_share_one():
    assert out("ray_port") == "6379"
    assert out("ray_port", RAY_PORT="7000") == "7000"
    assert out("ray_port", SLURM_JOB_ID="123") == str(20000 + 246)
    ports = out("for j in $(seq 1000 5999); do SLURM_JOB_ID=$j ray_port; done").split()
    gcs = [int(p) for p in ports]
    taken = gcs + [p + 1 for p in gcs]  # the Ray client server's port is the next one
    assert len(set(taken)) == len(taken) == 10000
    assert 20000 <= min(taken) and max(taken) < 30000  # below Linux's ephemeral ports
    assert out("ray_temp_dir", SLURM_JOB_ID="123") == "/tmp/inpo-ray-123"
    assert out("ray_temp_dir") == ""


def test_the_node_address_is_routable():
    ip = out("node_ip")
    assert ip and not ip.startswith("127.") and ip != "::1"
    assert out("node_ip", INPO_NODE_IP="10.9.8.7") == "10.9.8.7"


def test_the_node_address_skips_loopback_names(tmp_path):
    """The host name resolves to 127.0.1.1 (Debian's /etc/hosts) and there is no default
    route: `hostname -I`'s first address that is not loopback."""
    bin_dir = tmp_path / "bin"
    fake(bin_dir, "getent", "echo '127.0.1.1  STREAM node7'")
    fake(bin_dir, "ip", "exit 2")  # no route
    addresses = "127.0.0.1 169.254.3.4 10.1.2.3"
    fake(bin_dir, "hostname", f'[ "${{1:-}}" = -I ] && echo "{addresses}" || echo n7')
    assert out("node_ip", bin_dir=bin_dir) == "10.1.2.3"
    # a worker: the source address of its route to the head
    fake(bin_dir, "ip", "echo '10.5.0.1 dev ib0 src 10.5.0.9 uid 0'")
    assert out("node_ip 10.5.0.1", bin_dir=bin_dir) == "10.5.0.9"
    fake(bin_dir, "ip", "exit 2")
    fake(bin_dir, "hostname", '[ "${1:-}" = -I ] && echo "127.0.0.1" || echo n7')
    r = bash("node_ip", bin_dir=bin_dir)
    assert r.returncode == 1 and "set INPO_NODE_IP" in r.stderr


def test_ray_start_gets_cpus_gpus_address_and_the_jobs_ports():
    env = {"SLURM_JOB_ID": "42", "SLURM_GPUS_PER_NODE": "h100:8", "SLURM_CPUS_PER_TASK": "16"}
    head = out("head_args", **env).splitlines()
    ip = out("node_ip")
    for arg in (
        "--head",
        "--port=20084",
        "--ray-client-server-port=20085",
        "--num-cpus=16",
        "--num-gpus=8",
        f"--node-ip-address={ip}",
        "--temp-dir=/tmp/inpo-ray-42",
    ):
        assert arg in head, (arg, head)
    for flag, default in (("--dashboard-agent-listen-port", 52365), ("--dashboard-port", 8265)):
        port = [a for a in head if a.startswith(flag + "=")]  # free, not Ray's default
        assert len(port) == 1 and port[0] != f"{flag}={default}", head
    worker = out(f"worker_args {ip}", **env).splitlines()
    assert f"--address={ip}:20084" in worker and "--head" not in worker
    assert "--num-gpus=8" in worker and "--temp-dir=/tmp/inpo-ray-42" in worker


def test_the_wait_for_nodes_ends_with_a_named_error():
    with refused_port() as port:  # no head answers
        address = f"127.0.0.1:{port}"
        r = bash(f"wait_nodes {address} 2 8 1")
        # a node's `ray start` that ended fails it at once, not at the timeout
        ended = bash(f"true & pid=$!; sleep 0.2; wait_nodes {address} 2 8 300 $pid")
    assert r.returncode == 1
    assert r.stderr.strip() == (
        f"error: the Ray cluster at {address} has 0 of 2 nodes, 0 of 8 GPUs after 1s (timeout "
        "1s, INPO_RAY_JOIN_TIMEOUT): the missing nodes' `ray start` lines above say why"
    )
    assert ended.returncode == 1 and "ended before the Ray cluster" in ended.stderr, ended.stderr


def fake_venv(tmp_path: Path) -> Path:
    """A virtualenv whose `inpo` prints its arguments (and whose python is the real one)."""
    venv = tmp_path / "venv"
    fake(venv / "bin", "python", f'exec {sys.executable} "$@"')
    fake(venv / "bin", "inpo", 'echo "INPO $*"')
    return venv


def test_a_requeued_job_resumes_its_run(tmp_path):
    """launch/slurm.sbatch starts the run, and resumes it when the job runs again and the
    run's state.json exists."""
    run = tmp_path / "run"
    env = {"VENV": str(fake_venv(tmp_path)), "RAY_ADDRESS": "10.0.0.1:20084"}
    args = f"configs/quickstart.yaml run.dir={run} run.iterations=2"
    first = out(f"train_or_resume {args}", **env)
    assert first == f"INPO train {args} run.ray_address=10.0.0.1:20084"
    run.mkdir()
    (run / "state.json").write_text("{}")
    again = out(f"train_or_resume {args}", SLURM_JOB_ID="9", SLURM_RESTART_COUNT="1", **env)
    lines = again.splitlines()
    assert lines[0].startswith(f"{run}/state.json exists (job 9, restart 1)")
    assert lines[1] == f"INPO train --resume {run} run.ray_address=10.0.0.1:20084"
    r = bash("train_or_resume configs/quickstart.yaml learner.nope=1", **env)
    assert r.returncode == 2 and "INPO" not in r.stdout  # the config's error, not a run


def test_the_batch_script_starts_one_ray_node_per_slurm_node_and_waits(tmp_path):
    """main() with a fake Slurm whose `srun` records its arguments and ends at once: each
    node gets a step with the job's CPUs and all its memory, the head on the batch node,
    and the wait fails at once, naming it, since the nodes' `ray start` ended."""
    bin_dir = tmp_path / "bin"
    log = tmp_path / "srun.log"
    fake(bin_dir, "srun", f'echo "SRUN INPO_NODE_IP=${{INPO_NODE_IP:-}} $*" >> {log}')
    fake(bin_dir, "scontrol", 'printf "n1\\nn2\\nn3\\n"')
    fake(bin_dir, "scancel", f'echo "SCANCEL $*" >> {log}')
    env = clean_env(
        VENV=str(fake_venv(tmp_path)),
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        SLURM_JOB_ID="77",
        SLURM_JOB_NODELIST="n[1-3]",
        SLURMD_NODENAME="n2",
        SLURM_GPUS_PER_NODE="h100:4",
        SLURM_CPUS_PER_TASK="2",
        SLURM_SUBMIT_DIR=str(ROOT),
        INPO_RAY_JOIN_TIMEOUT="30",
    )
    cmd = ["bash", str(ROOT / "launch" / "slurm.sbatch"), "configs/quickstart.yaml"]
    cmd.append(f"run.dir={tmp_path / 'r'}")
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    ip = out("node_ip")
    assert r.stdout.startswith(
        f"job 77: Ray head on n2 at {ip}:20154, 2 worker node(s), 2 CPUs and 4 GPUs per node, "
        "temp dir /tmp/inpo-ray-77"
    ), r.stdout
    assert "ended before the Ray cluster" in r.stderr and "of 3 nodes, 0 of 12 GPUs" in r.stderr
    assert "INPO" not in r.stdout  # no run without its nodes
    steps = sorted(line for line in log.read_text().splitlines() if line.startswith("SRUN"))
    step = "--overlap --ntasks-per-node=1 --cpus-per-task=2 --mem=0"
    assert steps == sorted(
        [
            f"SRUN INPO_NODE_IP={ip} {step} --nodes=1 --ntasks=1 --nodelist=n2 "
            "launch/ray_cluster.sh head --block",
            f"SRUN INPO_NODE_IP= {step} --nodes=2 --ntasks=2 --nodelist=n1,n3 "
            f"launch/ray_cluster.sh worker {ip}:20154 --block",
        ]
    )
    # the steps were told to stop (SIGTERM; this script is not signalled)
    assert "SCANCEL --signal=TERM 77" in log.read_text().splitlines()


def test_the_batch_script_asks_for_requeue_and_the_nodes_memory():
    text = (ROOT / "launch" / "slurm.sbatch").read_text()
    for line in ("#SBATCH --requeue", "#SBATCH --mem=0", "#SBATCH --open-mode=append"):
        assert line in text.splitlines()
    code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if "sleep 15" in line or "ray stop" in line]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_the_scripts_are_shellcheck_clean():
    r = subprocess.run(
        ["shellcheck", "-x", *sorted(set(SCRIPTS))], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout


def test_ray_cluster_train_joins_the_heads_address(tmp_path):
    """`launch/ray_cluster.sh train` on the head joins the address `head` started it at."""
    env = clean_env(VENV=str(fake_venv(tmp_path)), SLURM_JOB_ID="42")
    cmd = [str(ROOT / "launch" / "ray_cluster.sh"), "train", "configs/x.yaml", "run.seed=3"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    ip = out("node_ip")
    assert r.stdout.strip() == f"INPO train configs/x.yaml run.ray_address={ip}:20084 run.seed=3"
