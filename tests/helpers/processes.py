"""Spawned processes and pipes for one test, always reclaimed (the ``procs`` fixture)."""

from __future__ import annotations

import torch.multiprocessing as mp


class Processes:
    """Starts spawned processes and pipes for one test; ``close()`` reclaims all of them."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("spawn")
        self.processes: list = []
        self.connections: list = []

    def pipe(self):
        """A duplex pipe whose two ends are closed at teardown."""
        a, b = self.ctx.Pipe()
        self.connections += [a, b]
        return a, b

    def start(self, target, *args, daemon: bool = True):
        """Start ``target(*args)`` in a spawned process."""
        process = self.ctx.Process(target=target, args=args, daemon=daemon)
        process.start()
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        for conn in self.connections:
            conn.close()
