"""The ray scheme across two real Ray nodes: the head on this host, a second node in a network
namespace of its own joined to it over a veth pair (needs root and ``ip netns``; skipped
otherwise). Two workers on each node; every update reaches all four, and the bytes that cross
the veth pair per update are about one model copy: one pull for the node, not one per worker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers.marked import kill_marked
from weightsync import RayWeightSyncScheme

ray = pytest.importorskip("ray")
from tests.helpers.ray_actors import SyncedModel  # noqa: E402  (imports ray)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

NETNS, HOST_IF, NODE_IF = "wsray-n2", "wsr-h", "wsr-n"
HEAD_IP, NODE_IP, PORT = "10.213.0.1", "10.213.0.2", 26379  # veth addresses of this test only
MARKER = "WEIGHTSYNC_TEST_RAY_NODES"
TIMEOUT = 120.0
RAY = str(Path(sys.executable).with_name("ray"))


def sh(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def two_nodes_possible() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[str]:
    """A Ray head on the host end of a veth pair and a second node in its own namespace."""
    if not two_nodes_possible():
        pytest.skip("needs root and `ip netns` for a second node in a network namespace")
    sh("ip", "netns", "del", NETNS)  # a leftover of an interrupted run
    for command in (
        ["ip", "netns", "add", NETNS],
        ["ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NODE_IF],
        ["ip", "link", "set", NODE_IF, "netns", NETNS],
        ["ip", "addr", "add", f"{HEAD_IP}/24", "dev", HOST_IF],
        ["ip", "link", "set", HOST_IF, "up"],
        ["ip", "netns", "exec", NETNS, "ip", "addr", "add", f"{NODE_IP}/24", "dev", NODE_IF],
        ["ip", "netns", "exec", NETNS, "ip", "link", "set", NODE_IF, "up"],
        ["ip", "netns", "exec", NETNS, "ip", "link", "set", "lo", "up"],
    ):
        done = sh(*command)
        if done.returncode:
            sh("ip", "netns", "del", NETNS)
            pytest.skip(f"cannot build the second node's network: {done.stderr.strip()}")
    marker = uuid.uuid4().hex
    os.environ[MARKER] = marker  # every Ray process started below inherits it
    os.environ["RAY_AUTH_MODE"] = "disabled"  # the node in the namespace has no token of its own
    address = f"{HEAD_IP}:{PORT}"
    common = ["--num-cpus=1", "--disable-usage-stats"]
    try:
        head = sh(RAY, "start", "--head", f"--node-ip-address={HEAD_IP}", f"--port={PORT}",
                  "--include-dashboard=false", '--resources={"node_a": 4}', *common)  # fmt: skip
        assert head.returncode == 0, head.stdout + head.stderr
        node = sh("ip", "netns", "exec", NETNS, RAY, "start", f"--address={address}",
                  f"--node-ip-address={NODE_IP}", '--resources={"node_b": 4}', *common)  # fmt: skip
        assert node.returncode == 0, node.stdout + node.stderr
        ray.init(address=address, _node_ip_address=HEAD_IP)
        yield address
    finally:
        ray.shutdown()
        kill_marked(MARKER, marker)
        os.environ.pop(MARKER, None)
        os.environ.pop("RAY_AUTH_MODE", None)
        sh("ip", "link", "del", HOST_IF)
        sh("ip", "netns", "del", NETNS)


def veth_bytes() -> int:
    """Bytes sent plus received on the host end of the veth pair: all that crossed nodes."""
    stats = Path(f"/sys/class/net/{HOST_IF}/statistics")
    return int((stats / "tx_bytes").read_text()) + int((stats / "rx_bytes").read_text())


def test_an_update_crosses_to_the_other_node_once_for_all_its_workers(two_nodes: str) -> None:
    wide = torch.nn.Linear(1024, 2048)  # 8 MiB per version
    model_bytes = sum(t.numel() * t.element_size() for t in wide.state_dict().values())
    actor_cls = ray.remote(num_cpus=0)(SyncedModel)
    actors = [
        actor_cls.options(resources={node: 1}).remote(lambda: torch.nn.Linear(1024, 2048))
        for node in ("node_a", "node_a", "node_b", "node_b")
    ]
    nodes = ray.get([a.node.remote() for a in actors], timeout=TIMEOUT)
    assert nodes[0] == nodes[1] != nodes[2] == nodes[3]  # two workers on each node
    scheme = RayWeightSyncScheme(timeout=TIMEOUT)
    scheme.init_on_sender("policy", model=wide, actors=actors)
    joined = [a.join.remote(scheme, w) for w, a in enumerate(actors)]
    scheme.connect()
    ray.get(joined, timeout=TIMEOUT)
    updates = 5
    try:
        before = veth_bytes()
        for _ in range(updates):
            with torch.no_grad():
                wide.weight.add_(1.0)
            scheme.send()
            assert len(set(ray.get([a.receive.remote() for a in actors]))) == 1
        per_update = (veth_bytes() - before) / updates
        held = ray.get(actors[3].weights.remote())
        assert torch.equal(held["weight"], wide.weight)
        assert ray.get(actors[3].reads_object_store.remote())  # no copy on the far node either
    finally:
        ray.get([a.leave.remote() for a in actors])
        scheme.shutdown()
        for actor in actors:
            ray.kill(actor)
    print(f"bytes between nodes per update: {per_update:.0f} (model: {model_bytes})")
    assert 0.9 * model_bytes <= per_update <= 1.4 * model_bytes
