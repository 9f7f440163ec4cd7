"""Two real network stacks on one machine: network namespaces joined by a veth pair, and
``torchrun --nnodes=2`` with one agent in each (the two-host benchmark and tests use both).

Each namespace is a "host" with its own interface, address and loopback; processes started in one
(``ip netns exec``) reach the other only over the veth link, whose bytes the interface counters
count and ``tc`` can limit. Only addresses assigned here (``10.99.<n>.1`` and ``.2``) are used, so
no traffic leaves the two namespaces. Needs root and iproute2; :func:`two_hosts` says why not.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Host:
    """One namespace: its name, its end of the veth pair and its address."""

    netns: str
    interface: str
    address: str

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside this namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def tx_bytes(self) -> int:
        """Bytes this host's interface has sent (its kernel counter)."""
        path = f"/sys/class/net/{self.interface}/statistics/tx_bytes"
        return int(subprocess.check_output(self.command("cat", path), text=True))


def unavailable() -> str | None:
    """Why two namespaces cannot be built here, or None."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"ws{os.getpid() % 100000}probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def two_hosts(rate: str | None = None) -> Iterator[tuple[Host, Host]]:
    """Namespaces ``a`` and ``b`` joined by a veth pair (``rate``, e.g. ``"1gbit"``: each
    direction limited with tc's token bucket); everything is removed on exit, processes left in
    them killed."""
    tag = f"ws{os.getpid() % 100000}"
    subnet = os.getpid() % 250 + 1
    hosts = (Host(f"{tag}a", f"{tag}a0", f"10.99.{subnet}.1"),
             Host(f"{tag}b", f"{tag}b0", f"10.99.{subnet}.2"))  # fmt: skip
    try:
        for host in hosts:
            _ip("netns", "add", host.netns)
        _ip("link", "add", hosts[0].interface, "type", "veth", "peer", "name", hosts[1].interface)
        for host in hosts:
            _ip("link", "set", host.interface, "netns", host.netns)
            _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", host.interface)
            _ip("-n", host.netns, "link", "set", host.interface, "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            if rate is not None:
                _ip("netns", "exec", host.netns, "tc", "qdisc", "add", "dev", host.interface,
                    "root", "tbf", "rate", rate, "burst", "1mb", "latency", "100ms")  # fmt: skip
        yield hosts
    finally:
        subprocess.run(["ip", "link", "del", hosts[0].interface], capture_output=True)
        for host in hosts:
            pids = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True,
                                  text=True).stdout.split()  # fmt: skip
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)


REPO = Path(__file__).resolve().parents[2]
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class TwoHostRun:
    """What one ``run.py`` job across the two hosts left: each agent's exit code and output,
    the trainer's summary, and the bytes host ``a`` (the trainer's) sent during it."""

    returncodes: list[int]
    outputs: list[str]
    summary: dict
    trainer_tx_bytes: int


def torchrun_two_hosts(hosts: tuple[Host, Host], nproc_per_node: int, out: Path,
                       *overrides: str, timeout: float = 600.0,
                       port: int = 29511) -> TwoHostRun:  # fmt: skip
    """``torchrun --nnodes=2 --nproc-per-node=N run.py sync=distributed ...``, node 0 (the
    trainer's) in ``hosts[0]``, node 1 in ``hosts[1]``; each rank's links bind its host's veth
    (``GLOO_SOCKET_IFNAME``)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    procs, logs = [], []
    before = hosts[0].tx_bytes()
    for node, host in enumerate(hosts):
        log = (out / f"node{node}.log").open("w+")
        logs.append(log)
        argv = host.command(
            "env", f"GLOO_SOCKET_IFNAME={host.interface}", sys.executable, "-m",
            "torch.distributed.run", "--nnodes=2", f"--nproc-per-node={nproc_per_node}",
            f"--node-rank={node}", f"--master-addr={hosts[0].address}",
            f"--master-port={port}", "run.py", "sync=distributed",
            f"hydra.run.dir={out / f'node{node}'}", *overrides,
        )  # fmt: skip
        procs.append(
            subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        )
    try:
        codes = [proc.wait(timeout) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    sent = hosts[0].tx_bytes() - before
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    summary_file = out / "node0" / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    return TwoHostRun(codes, outputs, summary, sent)


def main(argv: list[str] | None = None) -> None:
    """``python -m experiments.bench.netns [--rate 1gbit] NPROC TOPOLOGY [run.py overrides]``
    (as root): one job across two fresh namespaces; prints its figures as one JSON line, with
    the model copies host a sent per weight version."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--rate", default=None, help="tc rate of the link, e.g. 1gbit")
    parser.add_argument("nproc", type=int, help="processes per host (host a: trainer + N-1)")
    parser.add_argument("topology", choices=["flat", "per_host"])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix=f"two-hosts-{args.topology}-"))
    with two_hosts(args.rate) as hosts:
        run = torchrun_two_hosts(
            hosts, args.nproc, out, f"sync.topology={args.topology}", *args.overrides
        )
    summary = run.summary
    versions = max((w["version"] for w in summary.get("workers", {}).values()), default=0)
    copies = run.trainer_tx_bytes / (summary["model_bytes"] * versions) if versions else None
    keys = ("status", "weights_match", "num_workers", "model_bytes", "sync_latency_p50_ms",
            "sync_latency_p95_ms", "staleness_mean", "frames_per_s")  # fmt: skip
    print(json.dumps({"topology": args.topology, "nproc_per_host": args.nproc,
                      "rate": args.rate, "returncodes": run.returncodes,
                      **{k: summary.get(k) for k in keys}, "versions": versions,
                      "trainer_host_sent_bytes": run.trainer_tx_bytes,
                      "copies_per_version": copies, "out": str(out)}))  # fmt: skip


if __name__ == "__main__":
    main()
