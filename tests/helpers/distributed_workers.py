"""Worker and trainer processes for the distributed-scheme tests (importable by spawned children),
and what a test reads about a process from /proc (its CPU time, its sockets' local addresses)."""

from __future__ import annotations

import os
import socket
import struct

import torch
import torch.distributed as dist

from tests.helpers.models import make_model, perturb, state_of
from tests.helpers.workers import report_threads_at_exit
from weightsync import DistributedWeightSyncScheme, PeerDiedError


def serve_broadcasts(scheme, worker_id: int, ctl, seed: int = 1, device: str = "cpu") -> None:
    """Join the scheme's group with a model on ``device``, then apply updates until the trainer
    closes; report each state.

    Replies on ``ctl``: ``("state", version, state_dict on the CPU, facts)`` after each applied
    update (``facts``: ``default_group``, whether the default process group is initialised, and
    ``devices``, those the model's tensors are on), ``("closed",)`` at the end, or
    ``("error", type, message)``.
    """
    try:
        model = make_model(seed).to(device)
        scheme.init_on_receiver("policy", model=model, worker_id=worker_id)
        scheme.connect()
        receiver = scheme.get_receiver()
        ctl.send(("state", receiver.version, _on_cpu(state_of(model)), _facts(model)))
        while not scheme.closed:
            if scheme.receive(0.05):
                ctl.send(("state", receiver.version, _on_cpu(state_of(model)), _facts(model)))
        ctl.send(("closed",))
        scheme.shutdown()
    except Exception as err:
        ctl.send(("error", type(err).__name__, str(err)))


def _on_cpu(state: dict) -> dict:
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _facts(model) -> dict:
    devices = {str(t.device) for t in (*model.parameters(), *model.buffers())}
    return {"default_group": dist.is_initialized(), "devices": devices}


def serve_commands(scheme, worker_id: int, bind: str | None, ctl, seed: int = 1) -> None:
    """Join (binding ``bind``), take the initial weights, then obey commands on ``ctl``:

    ``("receive", timeout)`` -> ``("state", version, state)`` after one ``receive``;
    ``("busy",)`` -> ``("busy",)``, then act without receiving until ``("rest",)`` arrives,
    then ``("done",)`` (the test decides how long a rollout lasts, whatever the machine's load);
    ``("follow",)`` -> receive until the trainer is gone or closes, then ``("gone", "closed", "")``
    or ``("gone", error type, message)``;
    ``("stop",)`` -> shut down and ``("closed",)``. Anything raised: ``("error", type, msg)``.
    """
    try:
        model = make_model(seed)
        scheme.init_on_receiver("policy", model=model, worker_id=worker_id, bind=bind)
        scheme.connect()
        receiver = scheme.get_receiver()
        ctl.send(("state", receiver.version, state_of(model)))
        while True:
            command, *args = ctl.recv()
            if command == "receive":
                scheme.receive(args[0])
                ctl.send(("state", receiver.version, state_of(model)))
            elif command == "busy":
                ctl.send(("busy",))
                assert ctl.recv() == ("rest",)  # a long rollout: no receive() meanwhile
                ctl.send(("done",))
            elif command == "follow":
                try:
                    while not scheme.closed:
                        scheme.receive(0.5)
                    ctl.send(("gone", "closed", ""))
                except PeerDiedError as err:
                    ctl.send(("gone", type(err).__name__, str(err)))
                return
            elif command == "stop":
                scheme.shutdown()
                ctl.send(("closed",))
                return
    except Exception as err:
        ctl.send(("error", type(err).__name__, str(err)))


def exit_without_shutdown(scheme, worker_id: int, ctl) -> None:
    """Join and take the initial weights (``("state", version)``), then on ``("exit",)`` receive
    until the trainer is gone or closes (at once if ``wait=False``) and return without
    ``shutdown()``. After every exit hook of the interpreter ran, report the weightsync threads
    still alive: ``("threads", names)``; the interpreter then finalises.
    """
    report_threads_at_exit(ctl)
    scheme.init_on_receiver("policy", model=make_model(1), worker_id=worker_id)
    scheme.connect()
    ctl.send(("state", scheme.get_receiver().version))
    _, follow = ctl.recv()
    try:
        while follow and not scheme.closed:
            scheme.receive(0.5)
    except PeerDiedError:
        pass


def run_trainer(num_workers: int, timeout: float, ctl, heartbeat: float = 5.0) -> None:
    """A trainer process: picks a free port, reports it, connects, then sends on ``("send",)``."""
    try:
        model = make_model(0)
        scheme = DistributedWeightSyncScheme(
            num_workers=num_workers, timeout=timeout, join_timeout=150, heartbeat=heartbeat
        )
        scheme.init_on_sender("policy", model=model)
        ctl.send(("port", scheme.port))
        scheme.connect()
        ctl.send(("connected",))
        step = 0
        while True:
            ctl.recv()
            step += 1
            perturb(model, step)
            scheme.send()
            ctl.send(("sent", scheme.get_sender().version))
    except Exception as err:
        ctl.send(("error", type(err).__name__, str(err)))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by every thread of process ``pid``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def local_addresses(pid: int) -> set[str]:
    """The local IPv4 addresses of the TCP sockets process ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    addresses = set()
    with open(f"/proc/{pid}/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                raw = int(fields[1].split(":")[0], 16)
                addresses.add(socket.inet_ntoa(struct.pack("<I", raw)))
    return addresses
