"""``torch.distributed`` (c10d) building blocks: a store, two-rank gloo links, plain messages.

The distributed transport is made of these, and they are public (exported from
:mod:`weightsync.transports`): the experiment framework builds its rollout channel from them.

* :func:`open_store` starts the trainer's ``TCPStore`` listening on the one address it is given
  (a socket bound there, handed to the store), or connects a client to it;
* :class:`Link` is a private two-rank gloo process group between the trainer (rank 0) and one
  worker (rank 1), built from the store under its own key prefix. Each process binds its own
  interface: torch's default device selection (``GLOO_SOCKET_IFNAME`` honoured) or an explicit
  address or interface name (``bind``). A worker that dies breaks only its own link. CUDA
  tensors cross on a second, NCCL, group of the same two ranks (``NCCL_SOCKET_IFNAME``
  honoured), built at the first CUDA tensor: GPU to GPU, no copy through host memory;
* every control message is a small ``int64`` tensor (:func:`header`), and a buffer's layout
  crosses as JSON (:func:`encode_layout` / :func:`decode_layout`), never as a pickle: reaching
  the port does not let anyone run code in a worker.

c10d has no authentication: whoever reaches the store's port can join a link or disturb one, so
the network between the hosts must be trusted for availability and for the weights' integrity.
"""

from __future__ import annotations

import datetime
import json
import socket
import threading
import time
from typing import Any

import torch
import torch.distributed as dist

from weightsync.flat import FlatLayout, TensorSlot

__all__ = [
    "Link",
    "PendingSends",
    "as_bytes",
    "decode_layout",
    "empty_header",
    "encode_layout",
    "gpu_uuid",
    "header",
    "nccl_usable",
    "open_store",
]

#: Seconds a link's blocking receive may wait once connected: effectively forever, since a
#: worker may stay idle for hours. A dead peer ends the wait at once (its socket closes).
_IDLE_WAIT = datetime.timedelta(days=365)
_HEADER_LEN = 4


def open_store(
    host: str, port: int, *, is_master: bool, timeout: float, world_size: int | None = None
) -> dist.TCPStore:
    """The trainer's store (``is_master``: listening on ``host`` only) or a client of it.

    ``port=0`` on the trainer picks a free port (read it back from ``store.port``); a client
    retries connecting for up to ``timeout`` s, so workers may start before the trainer.
    """
    wait = datetime.timedelta(seconds=timeout)
    if not is_master:
        return dist.TCPStore(host, port, world_size, False, timeout=wait)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(128)
        store = dist.TCPStore(
            host,
            listener.getsockname()[1],
            world_size,
            True,
            timeout=wait,
            wait_for_workers=False,
            master_listen_fd=listener.fileno(),
        )
    except (OSError, RuntimeError) as err:
        listener.close()
        raise OSError(
            f"the trainer's store cannot listen on {host}:{port} ({err}); give an address of "
            "this machine (sync.host) and a free port (sync.port, 0 picks one)"
        ) from err
    listener.detach()  # the store owns the socket now and closes it when it is destroyed
    return store


def _device(bind: str) -> Any:
    """A gloo device bound to ``bind``: an interface name (``eth0``) or an address/hostname."""
    interfaces = {name for _, name in socket.if_nameindex()}
    if bind in interfaces:
        return dist.ProcessGroupGloo.create_device(interface=bind)
    return dist.ProcessGroupGloo.create_device(hostname=bind)


def nccl_usable() -> bool:
    """Whether this process can move CUDA tensors over NCCL (a GPU and an NCCL build of torch)."""
    return torch.cuda.is_available() and dist.is_nccl_available()


def gpu_uuid(device: torch.device) -> str:
    """The UUID of a CUDA device: the same GPU has the same one in every process of a host."""
    return str(torch.cuda.get_device_properties(device).uuid)


class Link:
    """A private two-rank gloo group between the trainer (rank 0) and one worker (rank 1), and
    an NCCL group of the same ranks for CUDA tensors.

    Built from ``store`` under ``prefix``; the constructor blocks until the peer has joined (at
    most ``timeout`` s). Afterwards receives wait without a time limit (an idle peer is not a
    dead one); a peer that dies ends every pending gloo operation with an error at once. The
    NCCL group is built when the first CUDA tensor is sent or received (both peers then join it
    through the store); it cannot see a peer die, so whoever learns of it from gloo calls
    :meth:`abort`.

    Args:
        store: the trainer's store (or a client of it).
        prefix: the store keys of this link; :meth:`forget_keys` deletes them once joined.
        rank: 0 for the trainer, 1 for the worker.
        timeout: seconds to wait for the peer to join.
        bind: this process's own address or interface; None: torch's default device
            (``GLOO_SOCKET_IFNAME`` if set, else the address the host name resolves to).
    """

    def __init__(
        self, store: dist.Store, prefix: str, rank: int, *, timeout: float, bind: str | None
    ):
        self.prefix = prefix
        self.rank = rank
        self.peer = 1 - rank
        self._store = store
        prefixed = dist.PrefixStore(f"{prefix}/gloo", store)
        wait = datetime.timedelta(seconds=timeout)
        if bind is None:
            self.group = dist.ProcessGroupGloo(prefixed, rank, 2, wait)
        else:
            options = dist.ProcessGroupGloo._Options()
            options._timeout = wait
            options._devices = [_device(bind)]
            self.group = dist.ProcessGroupGloo(prefixed, rank, 2, options)
        self.group._set_default_timeout(_IDLE_WAIT)
        self._nccl: Any = None

    def send(self, tensor: torch.Tensor, tag: int) -> Any:
        """Start sending ``tensor``; returns the work (keep ``tensor`` alive until it is done).

        A CUDA tensor is read on NCCL's stream, after the work already queued on the current one.
        """
        return self._group_for(tensor).send([tensor], self.peer, tag)

    def recv(self, tensor: torch.Tensor, tag: int, timeout: float | None = None) -> None:
        """Receive into ``tensor`` (blocking; raises RuntimeError when the peer is gone, and
        TimeoutError when ``timeout`` s pass first). A CUDA tensor holds the bytes when this
        returns, whatever stream reads it next."""
        work = self._group_for(tensor).recv([tensor], self.peer, tag)
        if timeout is None:  # explicitly: a bare wait() ends at the join timeout, closing the link
            work.wait(_IDLE_WAIT)
        else:
            started = time.monotonic()
            try:
                work.wait(datetime.timedelta(seconds=timeout))
            except RuntimeError as err:
                if time.monotonic() - started >= timeout:
                    raise TimeoutError(f"nothing arrived within {timeout:g} s") from err
                raise
        if tensor.is_cuda:
            torch.cuda.current_stream(tensor.device).synchronize()

    def forget_keys(self, group: str = "gloo") -> None:
        """Delete the rendezvous keys of this link's ``"gloo"`` or ``"nccl"`` group from the
        store (both ranks have joined it)."""
        for key in self._store.list_keys():
            if key.startswith(f"{self.prefix}/{group}/"):
                self._store.delete_key(key)

    def abort(self) -> None:
        """The peer is gone: end the NCCL group's pending transfers, which wait for it forever."""
        if self._nccl is not None:
            self._nccl.abort()

    def _group_for(self, tensor: torch.Tensor) -> Any:
        if not tensor.is_cuda:
            return self.group
        if self._nccl is None:
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = _IDLE_WAIT  # a busy peer is not a dead one; see abort()
            prefixed = dist.PrefixStore(f"{self.prefix}/nccl", self._store)
            self._nccl = dist.ProcessGroupNCCL(prefixed, self.rank, 2, options)
        return self._nccl


#: What a send belongs to, for :class:`PendingSends`: a kind of message and its number.
Mark = tuple[str, int]


class PendingSends:
    """A link's sends in flight, each kept with its tensor until it is known to be complete.

    gloo's ``is_completed()`` of a send stays False until someone calls ``wait()``, so completion
    is learnt from the protocol instead: once the peer answered a message (an update, a
    heartbeat), that message and every send before it have arrived, and :meth:`settle` collects
    them (their ``wait()`` returns at once). Without it every send ever made would be kept.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[tuple[int, Any, torch.Tensor, Mark | None]] = []
        self._seq = 0

    def add(self, work: Any, tensor: torch.Tensor, mark: Mark | None = None) -> None:
        """Keep ``work`` (sending ``tensor``, part of the message ``mark``, if any)."""
        with self._lock:
            self._seq += 1
            self._items.append((self._seq, work, tensor, mark))

    def settle(self, mark: Mark | None = None) -> None:
        """Collect every send up to the last one of the message ``mark`` (or of an older one of
        its kind); None: every send so far (the peer is known to be reading)."""
        kind, number = mark or ("", 0)
        with self._lock:
            last = self._seq if mark is None else max(
                (seq for seq, _, _, m in self._items if m and m[0] == kind and m[1] <= number),
                default=0,
            )  # fmt: skip
            done = [item for item in self._items if item[0] <= last]
            self._items = [item for item in self._items if item[0] > last]
        for _, work, tensor, _ in done:
            work.wait(_IDLE_WAIT)
            if tensor.is_cuda:  # NCCL's wait only orders streams: wait until the GPU read it
                torch.cuda.current_stream(tensor.device).synchronize()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def reading(self, data: torch.Tensor) -> bool:
        """Whether a send of ``data`` (the same memory) may still be in flight."""
        with self._lock:
            return any(t.data_ptr() == data.data_ptr() for _, _, t, _ in self._items)


def header(kind: int, version: int = 0, length: int = 0, extra: int = 0) -> torch.Tensor:
    """A control message: four ``int64`` (what, which version, bytes that follow, spare)."""
    return torch.tensor([kind, version, length, extra], dtype=torch.int64)


def empty_header() -> torch.Tensor:
    return torch.zeros(_HEADER_LEN, dtype=torch.int64)


def as_bytes(data: str | bytes) -> torch.Tensor:
    """Bytes (a string as UTF-8) as a tensor, to send after a header that gives their length."""
    raw = data.encode() if isinstance(data, str) else data
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def encode_layout(layout: FlatLayout, extra_keys: list[str]) -> bytes:
    """A buffer's layout as JSON: names, dtypes, shapes and offsets only."""
    slots = [[s.key, str(s.dtype).removeprefix("torch."), list(s.shape), s.offset, s.nbytes]
             for s in layout.slots]  # fmt: skip
    return json.dumps(
        {
            "slots": slots,
            "tensor_bytes": layout.tensor_bytes,
            "extra_capacity": layout.extra_capacity,
            "extra_keys": list(extra_keys),
        }
    ).encode()


def decode_layout(data: bytes) -> tuple[FlatLayout, list[str]]:
    """Parse :func:`encode_layout`'s JSON, checking every field (it comes from the network)."""
    try:
        doc = json.loads(data.decode())
        slots = []
        for key, dtype_name, shape, offset, nbytes in doc["slots"]:
            dtype = getattr(torch, dtype_name, None)
            if not isinstance(key, str) or not isinstance(dtype, torch.dtype):
                raise ValueError(f"bad slot {key!r} of dtype {dtype_name!r}")
            if not all(isinstance(n, int) and n >= 0 for n in (*shape, offset, nbytes)):
                raise ValueError(f"bad shape or offset in slot {key!r}")
            if nbytes != dtype.itemsize * _numel(shape) or offset + nbytes > doc["tensor_bytes"]:
                raise ValueError(f"slot {key!r} does not fit its size or the buffer")
            slots.append(TensorSlot(key, dtype, tuple(shape), offset, nbytes))
        extra_keys = doc["extra_keys"]
        if not all(isinstance(k, str) for k in extra_keys):
            raise ValueError("extra-state keys must be strings")
        layout = FlatLayout(tuple(slots), int(doc["tensor_bytes"]), int(doc["extra_capacity"]))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"malformed weight layout from the trainer: {err}") from None
    return layout, list(extra_keys)


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
