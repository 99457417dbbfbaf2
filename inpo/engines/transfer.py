"""Weights in memory: learner rank 0 broadcasts the policy's tensors to every vLLM worker
over a process group of their own.

The group is vLLM's stateless one (gloo), apart from DeepSpeed's default group in the
learner and vLLM's own in each worker, so neither library sees it. Rank 0 is the sender;
every generator's workers are ranks 1..N, and each tensor-parallel worker receives every
full tensor (vLLM's loader keeps its shard). Tensors travel in buckets of at most
`BUCKET_BYTES` (a larger tensor alone), so a receiver holds one bucket at a time, not a
second copy of the policy. Names, shapes and dtypes (`TensorSpec`) go through Ray first;
both sides cut the same buckets from them (`plan_buckets`).

Nothing here imports Ray or vLLM at module level: the learner rank and the vLLM worker
both import it, and the bucket plan is unit-tested on its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

#: largest bucket (bytes) one broadcast carries
BUCKET_BYTES = 256 << 20
#: a tensor this large goes alone, broadcast from its own memory: packing it would cost
#: a copy on the sender for nothing (a large tensor is already one message)
ALONE_BYTES = 16 << 20
#: byte offset every tensor starts at inside a bucket: a uint8 slice viewed as another
#: dtype must start on a multiple of its element size
ALIGN = 64


@dataclass(frozen=True)
class TensorSpec:
    """What a receiver needs to rebuild one tensor from raw bytes."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name: "float32", "bfloat16", ...

    @property
    def nbytes(self) -> int:
        n = getattr(torch, self.dtype).itemsize
        for s in self.shape:
            n *= s
        return n

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor) -> TensorSpec:
        return cls(name, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))


@dataclass(frozen=True)
class Bucket:
    """One broadcast: its size and, per tensor in it, (index into the specs, byte offset)."""

    nbytes: int
    items: tuple[tuple[int, int], ...]


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def plan_buckets(
    sizes: Sequence[int], limit: int = BUCKET_BYTES, alone: int = ALONE_BYTES
) -> list[Bucket]:
    """Cut tensors of ``sizes`` bytes, in order, into buckets of at most ``limit`` bytes;
    a tensor of ``alone`` bytes or more, or larger than ``limit``, goes alone. Each tensor
    starts on an ALIGN boundary."""
    if limit <= 0:
        raise ValueError(f"bucket limit must be positive, got {limit}")
    buckets: list[Bucket] = []
    items: list[tuple[int, int]] = []
    end = 0

    def close() -> None:
        if items:
            buckets.append(Bucket(end, tuple(items)))
            items.clear()

    for i, size in enumerate(sizes):
        offset = _aligned(end) if items else 0
        if items and (size >= alone or offset + size > limit):
            close()
            offset = 0
        items.append((i, offset))
        end = offset + size
        if size >= alone:
            close()
    close()
    return buckets


def join_group(
    host: str,
    port: int,
    rank: int,
    world: int,
    timeout_s: float,
    listen_socket: Any = None,
) -> Any:
    """Join the weight-update group (gloo); rank 0 hosts its store, on ``listen_socket``
    when given (bound and listening already, so no other process can take the port)."""
    from vllm.distributed.utils import stateless_init_torch_distributed_process_group

    return stateless_init_torch_distributed_process_group(
        host,
        port,
        rank,
        world,
        "gloo",
        timeout=timedelta(seconds=timeout_s),
        listen_socket=listen_socket,
    )


def _broadcast(group: Any, buffer: torch.Tensor) -> Any:
    """Start a broadcast from rank 0; returns its work (``.wait()``)."""
    # the group's own broadcast: torch.distributed.broadcast(group=...) looks the group up
    # among the default group's and refuses a stateless one
    opts = torch.distributed.BroadcastOptions()
    opts.rootRank, opts.rootTensor = 0, 0
    return group.broadcast([buffer], opts)


def _bytes_of(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def _packed(tensors: Sequence[torch.Tensor], bucket: Bucket) -> torch.Tensor:
    if len(bucket.items) == 1:  # one tensor: its own bytes, no copy
        return _bytes_of(tensors[bucket.items[0][0]])
    buffer = torch.empty(bucket.nbytes, dtype=torch.uint8)
    for i, offset in bucket.items:
        raw = _bytes_of(tensors[i])
        buffer[offset : offset + raw.numel()].copy_(raw)
    return buffer


def send_tensors(group: Any, tensors: Sequence[torch.Tensor], limit: int = BUCKET_BYTES) -> int:
    """Rank 0: broadcast ``tensors`` (in the order of the specs the receivers were given),
    bucket by bucket, packing the next bucket while one travels; returns the bytes sent."""
    sent = 0
    in_flight = None
    for bucket in plan_buckets([t.numel() * t.element_size() for t in tensors], limit):
        buffer = _packed(tensors, bucket)
        if in_flight is not None:
            in_flight.wait()
        in_flight = _broadcast(group, buffer)
        sent += bucket.nbytes
    if in_flight is not None:
        in_flight.wait()
    return sent


def receive_tensors(
    group: Any, specs: Sequence[TensorSpec], limit: int = BUCKET_BYTES
) -> Iterator[tuple[str, torch.Tensor]]:
    """Ranks 1..N: (name, tensor) of every spec, in order, as the buckets arrive; the next
    bucket is received while the caller hashes and loads this one (two in memory at
    most). Each bucket is a fresh buffer, because a loader may keep views of earlier
    tensors."""

    def start(bucket: Bucket) -> tuple[torch.Tensor, Any]:
        buffer = torch.empty(bucket.nbytes, dtype=torch.uint8)
        return buffer, _broadcast(group, buffer)

    buckets = plan_buckets([s.nbytes for s in specs], limit)
    following = start(buckets[0]) if buckets else None
    for k, bucket in enumerate(buckets):
        buffer, work = following
        work.wait()
        following = start(buckets[k + 1]) if k + 1 < len(buckets) else None
        for i, offset in bucket.items:
            spec = specs[i]
            raw = buffer[offset : offset + spec.nbytes]
            yield spec.name, raw.view(getattr(torch, spec.dtype)).view(spec.shape)
