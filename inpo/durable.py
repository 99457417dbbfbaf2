"""Writing outputs so that a crash or a power loss never leaves a short file behind a
"done" mark: everything is written under a temporary name, flushed to disk (the file,
then its directory), and renamed into place. Checksums let a resumed run prove that
what a done stage wrote is still whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

CHUNK = 1 << 22


def fsync_path(path: Path) -> None:
    """Flush a file or a directory entry list to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Flush a file, or a directory with everything below it."""
    if path.is_dir():
        for child in path.rglob("*"):
            fsync_path(child)
    fsync_path(path)


def publish(tmp: Path, final: Path) -> None:
    """Move a finished temporary file or directory to its final name, durably. A directory
    that exists under the final name is replaced (set aside first, removed last)."""
    fsync_tree(tmp)
    old = final.with_name(final.name + ".old")
    if final.is_dir():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.replace(final)
    fsync_path(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def temp_for(path: Path) -> Path:
    """The temporary name ``path`` is written under (any leftover is removed)."""
    tmp = path.with_name(path.name + ".tmp")
    if tmp.is_dir():
        shutil.rmtree(tmp)
    else:
        tmp.unlink(missing_ok=True)
    return tmp


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp)`` to produce the file or directory, then publish it as ``path``."""
    path = Path(path)
    tmp = temp_for(path)
    write(tmp)
    publish(tmp, path)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1))


def write_jsonl_atomic(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write all rows or nothing: a crash leaves no half file under the final name."""
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def append_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows to a file of finished chunks and flush them to disk before returning."""
    with path.open("a") as f:
        f.write("".join(json.dumps(row) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl_prefix(path: Path) -> list[dict[str, Any]]:
    """The whole rows of a file `append_jsonl` wrote (none if absent); a row torn by a crash
    mid-append, and anything after it, is cut off the file."""
    if not path.exists():
        return []
    rows, good = [], 0
    with path.open("rb") as f:
        for line in f:
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("torn")
                rows.append(json.loads(line))
            except ValueError:
                break
            good += len(line)
    if good != path.stat().st_size:
        os.truncate(path, good)
    return rows


def finished_chunks(path: Path | None, prompt_ids: list) -> list[dict[str, Any]]:
    """The rows a stage interrupted before already appended to ``path`` for the first of
    ``prompt_ids``; a file written for other prompts is removed (the stage starts over)."""
    rows = read_jsonl_prefix(path) if path else []
    if [r["prompt_id"] for r in rows] != prompt_ids[: len(rows)]:
        path.unlink()
        return []
    return rows


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def manifest(root: Path, paths: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """{path relative to root: {bytes, sha256}} of files (directories: every file below)."""
    out = {}
    for p in paths:
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            out[str(f.relative_to(root))] = {"bytes": f.stat().st_size, "sha256": file_digest(f)}
    return out


def damaged(root: Path, recorded: dict[str, dict[str, Any]]) -> str | None:
    """Why the files a manifest records are no longer what was written, or None."""
    for rel, want in recorded.items():
        f = root / rel
        if not f.is_file():
            return f"{f} is missing"
        size = f.stat().st_size
        if size != want["bytes"]:
            return f"{f} has {size} bytes, {want['bytes']} were written"
        if file_digest(f) != want["sha256"]:
            return f"{f} does not match its checksum"
    return None
