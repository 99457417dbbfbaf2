"""The in-memory weight sync's buckets, and a broadcast through them (two threads, one
gloo group), bit for bit."""

from __future__ import annotations

import socket
import threading

import pytest
import torch

from inpo.engines.transfer import (
    ALIGN,
    TensorSpec,
    join_group,
    plan_buckets,
    receive_tensors,
    send_tensors,
)


def test_buckets_keep_order_stay_under_the_limit_and_align_every_tensor():
    sizes = [10, 100, 30, 64, 1, 500, 7, 0, 120]
    buckets = plan_buckets(sizes, limit=200)
    order = [i for b in buckets for i, _ in b.items]
    assert order == list(range(len(sizes)))  # every tensor once, in order
    for b in buckets:
        offsets = [o for _, o in b.items]
        assert all(o % ALIGN == 0 for o in offsets) and offsets[0] == 0
        ends = [o + sizes[i] for i, o in b.items]
        assert all(e <= o for e, o in zip(ends, offsets[1:], strict=False))  # no overlap
        assert b.nbytes == ends[-1]
        assert b.nbytes <= 200 or len(b.items) == 1  # only a tensor over the limit alone
    assert [[i for i, _ in b.items] for b in buckets] == [[0, 1], [2, 3, 4], [5], [6, 7, 8]]
    assert buckets[2].items == ((5, 0),) and buckets[2].nbytes == 500


def test_a_large_tensor_goes_alone_from_its_own_memory():
    buckets = plan_buckets([8, 8, 100, 8, 8], limit=1000, alone=100)
    assert [b.items for b in buckets] == [((0, 0), (1, 64)), ((2, 0),), ((3, 0), (4, 64))]
    assert [b.nbytes for b in buckets] == [72, 100, 72]


def test_one_bucket_when_everything_fits_and_none_for_no_tensors():
    (only,) = plan_buckets([4, 4, 4], limit=1 << 20)
    assert only.items == ((0, 0), (1, 64), (2, 128)) and only.nbytes == 132
    assert plan_buckets([]) == []
    with pytest.raises(ValueError, match="positive"):
        plan_buckets([1], limit=0)


def test_spec_bytes_follow_shape_and_dtype():
    spec = TensorSpec.of("w", torch.zeros(3, 5, dtype=torch.bfloat16))
    assert spec == TensorSpec("w", (3, 5), "bfloat16") and spec.nbytes == 30
    assert TensorSpec("s", (), "float32").nbytes == 4


def test_a_broadcast_through_buckets_is_bit_exact():
    torch.manual_seed(0)
    tensors = [
        torch.randn(33, 7),
        torch.randn(5).to(torch.bfloat16),
        torch.randn(1000),  # over the limit: a bucket of its own
        torch.arange(3, dtype=torch.int64),
        torch.randn(4, 4)[:, 1],  # not contiguous
    ]
    specs = [TensorSpec.of(f"t{i}", t) for i, t in enumerate(tensors)]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    got: dict = {}

    def receive() -> None:
        group = join_group("127.0.0.1", port, 1, 2, timeout_s=60)
        got["tensors"] = [(n, t.clone()) for n, t in receive_tensors(group, specs, limit=1024)]

    thread = threading.Thread(target=receive)
    thread.start()
    group = join_group("127.0.0.1", port, 0, 2, timeout_s=60, listen_socket=listener)
    sent = send_tensors(group, tensors, limit=1024)  # 1000 floats: alone
    thread.join(timeout=60)
    assert sent == sum(b.nbytes for b in plan_buckets([s.nbytes for s in specs], 1024))
    assert [n for n, _ in got["tensors"]] == [s.name for s in specs]
    for t, (_, r) in zip(tensors, got["tensors"], strict=True):
        assert r.dtype == t.dtype and r.shape == t.shape and torch.equal(r, t)
