"""Worker processes for the multi-process tests (importable by spawned children).

``serve`` runs a receiver for one scheme and answers commands on a control pipe, so a test can
drive the worker step by step and inspect what it holds:

* ``("sync", version, timeout)``: call ``receive`` until the worker holds ``version``
  (or the timeout passes); reply ``("state", version, state_dict)``;
* ``("forward", x)``: reply ``("output", model(x))``;
* ``("stop",)``: shut the scheme down and exit.

Any exception is sent back as ``("error", type name, message)`` before the worker exits.
"""

from __future__ import annotations

import atexit
import threading
import time

import torch

from tests.helpers.models import make_model, state_of


def serve(scheme, pipe, ctl, model_id: str = "policy", seed: int = 1) -> None:
    try:
        model = make_model(seed)
        scheme.init_on_receiver(model_id, model=model, pipe=pipe)
        scheme.connect()
        receiver = scheme.get_receiver()
        while True:
            scheme.receive(0.002)
            if not ctl.poll(0.002):
                continue
            command = ctl.recv()
            if command[0] == "stop":
                break
            if command[0] == "sync":
                _, version, timeout = command
                deadline = time.monotonic() + timeout
                while receiver.version < version and time.monotonic() < deadline:
                    scheme.receive(0.01)
                ctl.send(("state", receiver.version, state_of(model)))
            elif command[0] == "forward":
                with torch.no_grad():
                    ctl.send(("output", model(command[1])))
        scheme.shutdown()
    except Exception as err:  # report, then exit: the test decides what it means
        ctl.send(("error", type(err).__name__, str(err)))


# How long a test waits for a worker's answer before calling it silent: a liveness bound (a
# spawned worker imports torch first; a loaded 2-core machine has taken over a minute).
REPLY_S = 150.0


def expect_reply(ctl, what: str = "reply", timeout: float = REPLY_S):
    """The worker's next message on ``ctl``; fails the test on silence or an error reply."""
    assert ctl.poll(timeout), f"worker did not {what} within {timeout} s"
    reply = ctl.recv()
    assert reply[0] != "error", f"worker failed: {reply[1:]}"
    return reply


def ask(ctl, *command, timeout: float = REPLY_S):
    """Send ``command`` to a worker serving a control pipe and return its reply."""
    ctl.send(command)
    return expect_reply(ctl, f"answer {command[0]!r}", timeout)


def report_threads_at_exit(ctl) -> None:
    """Send ``("threads", names)`` on ``ctl`` at exit: the weightsync threads still alive once
    every exit hook registered after this call has run (call it before weightsync sets up)."""
    atexit.register(_report_live_threads, ctl)


def _report_live_threads(ctl) -> None:
    ctl.send(("threads", [t.name for t in threading.enumerate() if "weightsync" in t.name]))
