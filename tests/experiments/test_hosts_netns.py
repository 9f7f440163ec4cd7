"""``torchrun --nnodes=2`` across two real network stacks (namespaces joined by a veth pair, one
torchrun agent in each), ``run.py sync=distributed`` in both topologies: the trainer and one
worker on host a, two workers on host b. What host a's interface sent says how many copies of
each update crossed the link: one per remote worker (flat) or one per remote host (per_host)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from experiments.bench.netns import REPO, torchrun_two_hosts, two_hosts, unavailable
from tests.helpers.netns_scheme import MODEL_BYTES

WHY_NOT = unavailable()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(WHY_NOT is not None, reason=f"no two network namespaces: {WHY_NOT}"),
]


@pytest.mark.parametrize(("topology", "copies"), [("flat", 2), ("per_host", 1)])
def test_run_py_across_two_hosts_sends_one_copy_per_remote_worker_or_host(
    tmp_path, topology, copies
):
    with two_hosts() as hosts:
        run = torchrun_two_hosts(
            hosts, 2, tmp_path, f"sync.topology={topology}", "model=mlp_1m", "experiment=smoke",
            "sync.timeout=60", "run.startup_timeout=300", timeout=500,
        )  # fmt: skip
    assert run.returncodes == [0, 0], "\n".join(out[-3000:] for out in run.outputs)
    summary = run.summary
    assert summary["status"] == "completed" and summary["num_workers"] == 3, summary
    assert summary["weights_match"] is True, summary
    versions = max(worker["version"] for worker in summary["workers"].values())
    sent = run.trainer_tx_bytes / (summary["model_bytes"] * versions)
    # The weights dominate what host a sends (commands are a few bytes, rollouts come the other
    # way: only their TCP acknowledgements leave); 15% covers those.
    assert copies <= sent <= copies * 1.15, (sent, run.trainer_tx_bytes, versions)


@pytest.mark.parametrize(("topology", "copies"), [("flat", 2), ("per_host", 1)])
def test_the_library_scheme_across_two_hosts_tells_them_apart_by_their_network(
    tmp_path, topology, copies
):
    """The scheme alone, no launcher: trainer and worker 0 in namespace a, workers 1 and 2 in
    b, nobody told which host it is on."""
    with two_hosts() as (a, b):
        place = [(a, "trainer"), (a, "worker", "0"), (b, "worker", "1"), (b, "worker", "2")]
        before = a.tx_bytes()
        procs = []
        for host, role, *rest in place:
            argv = host.command(sys.executable, "-m", "tests.helpers.netns_scheme", role,
                                a.address, "29611", "3", topology, *rest, host.address)  # fmt: skip
            procs.append(subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))  # fmt: skip
        results = [proc.communicate(timeout=400) for proc in procs]
        sent = a.tx_bytes() - before
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err[-3000:]
    trainer, *workers = [json.loads(out.splitlines()[-1]) for out, _ in results]
    assert trainer["acked"] == {str(w): 4 for w in range(3)}  # JSON keys are strings
    for worker in workers:
        assert worker == {"version": 4, "checksum": trainer["checksum"]}
    # Four versions, each crossing the link once per remote worker (flat) or host (per_host).
    assert copies <= sent / (4 * MODEL_BYTES) <= copies * 1.15, sent
