"""Starting (or joining) the Ray cluster and deciding the device."""

from __future__ import annotations

import os

from inpo.config import InpoConfig
from inpo.errors import InpoError

# Quiet engines: the driver prints progress; full logs stay in Ray's log dir.
QUIET_ENV = {
    "VLLM_LOGGING_LEVEL": "WARNING",
    "VLLM_CONFIGURE_LOGGING": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_AUTH_MODE": "disabled",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_OFFLINE": "1",
}


def start_ray(cfg: InpoConfig) -> str:
    """Start or join Ray; returns the device every actor computes on ('cpu' or 'cuda':
    'cpu' under run.simulate_gpus, whose GPUs only place actors)."""
    import ray

    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    if not ray.is_initialized():
        runtime_env = {"env_vars": {k: os.environ[k] for k in QUIET_ENV}}
        if cfg.run.ray_address:
            ray.init(
                address=cfg.run.ray_address,
                runtime_env=runtime_env,
                log_to_driver=cfg.run.actor_logs,
            )
        else:
            cpus = cfg.run.num_cpus or max(8, os.cpu_count() or 1)
            # "local": a fresh instance even where `ray start` ran (or left a stale record
            # in Ray's temp dir), which a bare ray.init() would try to join.
            ray.init(
                address="local",
                num_cpus=cpus,
                num_gpus=cfg.run.num_gpus,
                runtime_env=runtime_env,
                include_dashboard=False,
                log_to_driver=cfg.run.actor_logs,
            )
    gpus = ray.cluster_resources().get("GPU", 0)
    if cfg.run.simulate_gpus:
        if not gpus:
            raise InpoError(
                "run.simulate_gpus = true but the Ray cluster has no GPU: give the local "
                "cluster logical ones (run.num_gpus=N) or start nodes with --num-gpus=N"
            )
        return "cpu"
    if cfg.run.device == "cuda" and not gpus:
        raise InpoError("run.device = cuda but the Ray cluster has no GPU")
    if cfg.run.device == "auto":
        return "cuda" if gpus else "cpu"
    return cfg.run.device
