"""Where a CUDA update travels, decided on any machine: the distributed transport's GPU choices
as pure functions of what each side reports (weightsync/transports/routing.py).

The real transfers run in tests/weightsync/test_scheme_distributed_gpu.py on a GPU machine
(``.ci/gpu-check``); these tests pin the decisions those transfers follow. A CUDA
``torch.device`` is only a name here: nothing is allocated on a GPU.
"""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

from weightsync.transports import Link, open_store
from weightsync.transports.routing import (
    HOST_STAGING_WARNING,
    Route,
    WarnOnce,
    nccl_keys_done,
    route,
    routes,
    staging_device,
)

GPU0, GPU1 = torch.device("cuda", 0), torch.device("cuda", 1)
CPU = torch.device("cpu")
UUID0, UUID1 = "GPU-0000-aaaa", "GPU-1111-bbbb"  # what torch.cuda reports, per physical GPU


@pytest.mark.parametrize(
    ("devices", "use_nccl", "expected"),
    [
        ({GPU0}, True, (GPU0, False)),  # one GPU, NCCL: stays there
        ({GPU1}, True, (GPU1, False)),  # whichever GPU it is
        ({GPU0}, False, (CPU, True)),  # no NCCL (or backend='gloo'): host copy, warned
        ({GPU0, GPU1}, True, (CPU, True)),  # spread over two GPUs: host copy, warned
        ({GPU0, CPU}, True, (CPU, True)),  # partly on the host: host copy, warned
        ({CPU}, True, (CPU, False)),  # a CPU model: host memory is no fallback
        ({CPU}, False, (CPU, False)),
    ],
    ids=["gpu0", "gpu1", "no-nccl", "two-gpus", "gpu-and-cpu", "cpu", "cpu-no-nccl"],
)
def test_the_trainer_stages_on_its_gpu_only_when_nccl_can_carry_it(devices, use_nccl, expected):
    assert staging_device(devices, use_nccl) == expected


@pytest.mark.parametrize(
    ("buffer_gpu", "worker_gpu", "use_nccl", "expected"),
    [
        (UUID0, UUID1, True, Route.NCCL),  # another GPU: GPU to GPU
        (UUID0, UUID0, True, Route.HOST_COPY),  # the trainer's own GPU: NCCL refuses two ranks
        (UUID0, None, True, Route.HOST_COPY),  # the worker takes host memory
        (UUID0, UUID1, False, Route.HOST_COPY),  # the trainer may not use NCCL
        (None, UUID1, True, Route.HOST),  # the buffer is in host memory: as it is
        (None, None, False, Route.HOST),
    ],
    ids=["other-gpu", "same-gpu", "cpu-worker", "no-nccl", "host-buffer", "all-host"],
)
def test_each_worker_is_routed_by_the_gpus_both_sides_report(
    buffer_gpu, worker_gpu, use_nccl, expected
):
    assert route(buffer_gpu, worker_gpu, use_nccl) is expected


def test_a_mixed_fleet_is_routed_worker_by_worker():
    """One worker per case, as the trainer sees them after their hellos."""
    fleet = {0: UUID1, 1: UUID0, 2: None}
    assert routes(UUID0, fleet, use_nccl=True) == {
        0: Route.NCCL,
        1: Route.HOST_COPY,
        2: Route.HOST_COPY,
    }


@pytest.mark.parametrize(
    ("rendezvous", "answered", "received", "done"),
    [
        (3, 3, True, True),  # the first NCCL update arrived: both ranks joined the group
        (3, 5, True, True),  # a later one (the first was coalesced away)
        (3, 2, True, False),  # an answer to an update sent before the NCCL one
        (3, 3, False, False),  # refused: nothing says the worker joined
        (None, 7, True, False),  # no NCCL rendezvous pending (none yet, or forgotten already)
    ],
)
def test_nccl_keys_leave_the_store_once_the_worker_received_over_nccl(
    rendezvous, answered, received, done
):
    assert nccl_keys_done(rendezvous, answered, received) is done


def test_each_fallback_is_warned_about_once():
    warn, copies = WarnOnce(), "worker(s) [1] get a host copy"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert warn("host", HOST_STAGING_WARNING)
        assert not warn("host", HOST_STAGING_WARNING)
        assert warn("workers", copies)
    assert [str(w.message) for w in caught] == [HOST_STAGING_WARNING, copies]


JOIN_S = 120  # a liveness bound only: both ranks join in well under a second on an idle machine


@pytest.mark.timeout(2 * JOIN_S + 30)
def test_forgetting_a_links_nccl_keys_leaves_every_other_key():
    """The store-key clean-up the trainer does once a worker joined NCCL, on a real store and a
    real two-rank gloo link (both ranks in this process): only that group's keys go."""
    store = open_store("127.0.0.1", 0, is_master=True, timeout=JOIN_S)
    # Each rank talks to the store through its own client, as two processes would: one TCPStore
    # client shared by two threads blocked in wait() can lose a reply and time out.
    peer_store = open_store("127.0.0.1", store.port, is_master=False, timeout=JOIN_S)
    links: dict[int, Link] = {}

    def join(rank: int) -> None:
        own = store if rank == 0 else peer_store
        links[rank] = Link(own, "weightsync/link/0", rank, timeout=JOIN_S, bind="127.0.0.1")

    peer = threading.Thread(target=join, args=(1,))
    peer.start()
    join(0)
    peer.join(timeout=JOIN_S)
    assert 1 in links, "the second rank did not join the link"
    store.set("weightsync/link/0/nccl/0", "rank 0's NCCL id")  # what an NCCL rendezvous leaves
    store.set("weightsync/link/1/nccl/0", "another worker's")
    links[0].forget_keys("nccl")
    keys = set(store.list_keys())
    assert "weightsync/link/0/nccl/0" not in keys
    assert "weightsync/link/1/nccl/0" in keys
    links[0].forget_keys("gloo")
    assert not [k for k in store.list_keys() if k.startswith("weightsync/link/0/")]
