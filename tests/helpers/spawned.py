"""Spawned-process targets for the transport, multi-model and ModelGroup tests (importable by
spawned children). Each reports failures on its control pipe as ``("error", type, message)``."""

from __future__ import annotations

import time

from torch import nn

from tests.helpers.models import state_of
from weightsync import MPTransport


def echo_transport(pipe) -> None:
    """Worker end of a bare MPTransport: acknowledge each update; answer ``"sum?"`` with the sum
    of the last weights received (as the acknowledgement message); exit when the trainer closes."""
    link = MPTransport(pipe, timeout=30.0)
    total = None
    while True:
        got = link.receive_weights(timeout=30.0)
        if got is None:
            assert link.closed, "no message from the trainer within 30 s"
            return
        _, weights = got
        if weights == "sum?":
            link.send_ack(f"{total}")
        else:
            total = float(sum(t.sum() for t in weights.values()))
            link.send_ack()


def serve_models(schemes: dict, pipes: dict, models: dict[str, nn.Module], ctl) -> None:
    """Worker holding several models, one scheme each (model id -> scheme, pipe, model).

    Connects every scheme in the order given, then keeps receiving on all of them. Commands:
    ``("state", timeout, {model_id: version})``: wait until each model holds at least that version,
    reply ``("state", {model_id: version}, {model_id: state})``; ``("stop",)``. A scheme whose
    initial weights do not fit is reported as ``("refused", model_id, message)`` and kept: it goes
    on receiving (and refusing) like the others.
    """
    try:
        for model_id, scheme in schemes.items():
            ctl.send(("unpickled", model_id, scheme.role, scheme._transport is None))
            scheme.init_on_receiver(model_id, model=models[model_id], pipe=pipes[model_id])
        for model_id, scheme in schemes.items():
            try:
                scheme.connect()
            except Exception as err:
                ctl.send(("refused", model_id, f"{type(err).__name__}: {err}"))
        while True:
            for scheme in schemes.values():
                scheme.receive(0.002)
            if not ctl.poll(0.002):
                continue
            command = ctl.recv()
            if command[0] == "stop":
                break
            _, timeout, wanted = command
            deadline = time.monotonic() + timeout
            versions = {}
            for model_id, version in wanted.items():
                receiver = schemes[model_id].get_receiver()
                while receiver.version < version and time.monotonic() < deadline:
                    for scheme in schemes.values():
                        scheme.receive(0.005)
                versions[model_id] = receiver.version
            states = {model_id: state_of(models[model_id]) for model_id in schemes}
            ctl.send(("state", versions, states))
        for scheme in schemes.values():
            scheme.shutdown()
    except Exception as err:  # report, then exit: the test decides what it means
        ctl.send(("error", type(err).__name__, str(err)))
