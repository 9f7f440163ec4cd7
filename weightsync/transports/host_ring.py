"""One host's shared snapshot ring, handed to the other processes of that host over a Unix socket.

Invariant: the processes of one host read each update from the same immutable snapshot, published
whole by its one writer (the host's relay, or the trainer on its own host); no reader ever sees a
half-written one. The ring itself is :class:`~weightsync.transports.shared_mem.SnapshotRing`, the
shared-mem scheme's (hazard slots per reader, one 8-byte publication word).

Processes a launcher started independently have no pipe between them to pickle the ring through,
so the writer (:class:`RingServer`) listens on an abstract Unix socket and passes the ring's
memory to each reader (:class:`RingClient`) as file descriptors (``SCM_RIGHTS``). The memory is
torch's file-descriptor shared memory, unlinked at creation: nothing is left in ``/dev/shm``
whichever process is killed, and it is freed when the last process mapping it exits. The socket
connection stays open: the writer learns of a reader's death (and frees what it held), a reader of
the writer's.

Which processes share a host is decided by :func:`host_key`: the same machine (boot id) and the
same network namespace, exactly the processes that reach each other's abstract sockets.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import struct
import threading
import time

import torch

from weightsync.errors import PeerDiedError, SyncTimeoutError
from weightsync.flat import FlatBuffer, FlatLayout
from weightsync.shm import check_room
from weightsync.transports.c10d import decode_layout
from weightsync.transports.shared_mem import _NONE, SnapshotRing, _make_read_only

_LENGTH = struct.Struct("!I")


def host_key() -> str:
    """What identifies this process's host: its machine's boot id and its network namespace
    (processes sharing both can share memory and reach each other's abstract Unix sockets)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}/{os.stat('/proc/self/ns/net').st_ino}"
    except OSError:  # not Linux: the host name is the best guess
        return socket.gethostname()


def _send_message(sock: socket.socket, doc: dict, fds: list[int] = ()) -> None:
    data = json.dumps(doc).encode()
    socket.send_fds(sock, [_LENGTH.pack(len(data)) + data], list(fds))


def _recv_exact(sock: socket.socket, n: int, fds: list[int] | None = None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if fds is not None and not chunks:
            data, new_fds, _, _ = socket.recv_fds(sock, n - got, 64)
            fds.extend(new_fds)
        else:
            data = sock.recv(n - got)
        if not data:
            raise EOFError("the peer closed the connection")
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def _recv_message(sock: socket.socket) -> tuple[dict, list[int]]:
    fds: list[int] = []
    head = _recv_exact(sock, _LENGTH.size, fds)
    (length,) = _LENGTH.unpack(head)
    return json.loads(_recv_exact(sock, length, fds).decode()), fds


def _shared_fd(tensor: torch.Tensor) -> int:
    fd, _ = tensor.untyped_storage()._share_fd_cpu_()
    return fd


def _from_fd(fd: int, nbytes: int, dtype: torch.dtype) -> torch.Tensor:
    storage = torch.UntypedStorage._new_shared_fd_cpu(fd, nbytes)  # maps its own duplicate
    os.close(fd)
    return torch.empty(0, dtype=dtype).set_(storage)


class RingServer:
    """The writer of one host's ring: creates it for each layout, hands it to the readers.

    Args:
        address: the abstract Unix socket name to listen on (unique per scheme and host).
        readers: the worker ids reading the ring; reader ``i`` is ``readers[i]``.
        timeout: seconds a reader's request waits for the ring of its layout.
    """

    def __init__(self, address: str, readers: list[int], *, timeout: float):
        self.readers = list(readers)
        self.timeout = timeout
        self.ring: SnapshotRing | None = None
        self._layout: bytes | None = None  # the JSON layout the ring was made for
        self._cond = threading.Condition()
        self._closed = False
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listener.bind("\0" + address)
        except OSError as err:
            self._listener.close()
            raise OSError(f"cannot listen on the host socket {address!r}: {err}") from err
        self._listener.listen(len(self.readers) + 4)
        self._thread = threading.Thread(target=self._accept, name="weightsync-ring", daemon=True)
        self._thread.start()

    def ring_for(self, layout_json: bytes) -> SnapshotRing:
        """The ring for this layout, made (and offered to waiting readers) if it is new."""
        with self._cond:
            if self._layout != layout_json:
                layout, extra_keys = decode_layout(layout_json)
                self.ring = _create_ring(layout, extra_keys, len(self.readers))
                self._layout = layout_json
                self._cond.notify_all()
            return self.ring

    def free_buffer(self, deadline: float) -> tuple[int, FlatBuffer]:
        """A buffer nobody publishes, holds or takes (waiting for one until ``deadline``)."""
        ring = self.ring
        while (index := ring.free_index()) is None:
            if time.monotonic() >= deadline:
                raise SyncTimeoutError(
                    f"no free snapshot buffer on this host's ring of {len(ring.buffers)}: the "
                    "workers hold them all"
                )
            time.sleep(0.001)
        return index, ring.buffers[index]

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        """Answer one reader's requests; once it is gone, free what it held."""
        reader = None
        try:
            while True:
                request, _ = _recv_message(conn)
                reader = self.readers.index(request["worker"])
                layout = request["layout"].encode()
                deadline = time.monotonic() + self.timeout
                with self._cond:
                    while self._layout != layout and not self._closed:
                        if not self._cond.wait(max(0.0, deadline - time.monotonic())):
                            break
                    ring = self.ring if self._layout == layout else None
                if ring is None:
                    _send_message(conn, {"error": "no ring of that layout was published"})
                    continue
                tensors = [b.data for b in ring.buffers] + [ring.control]
                _send_message(
                    conn,
                    {"reader": reader, "sizes": [t.untyped_storage().nbytes() for t in tensors]},
                    [_shared_fd(t) for t in tensors],
                )
        except (EOFError, OSError, ValueError, KeyError):
            pass
        finally:
            conn.close()
            if reader is not None and self.ring is not None and not self._closed:
                self.ring.release_reader(reader)  # dead or gone: its buffers may be reused


def _create_ring(layout: FlatLayout, extra_keys: list[str], num_readers: int) -> SnapshotRing:
    """A ring of ``num_readers + 2`` snapshots (a free one always exists) for ``layout``."""
    num_buffers = num_readers + 2
    what = f"this host's ring of {num_buffers} snapshots of {layout.total_bytes} bytes"
    check_room(num_buffers * layout.total_bytes, what)
    buffers = [FlatBuffer(layout, extra_keys=extra_keys) for _ in range(num_buffers)]
    control = torch.full((1 + 2 * num_readers,), _NONE, dtype=torch.int64).share_memory_()
    return SnapshotRing(buffers, control)


class RingClient:
    """A reader of its host's ring: asks the writer for it, watches that the writer lives.

    Args:
        address: the writer's abstract Unix socket name.
        worker_id: this worker's id (its reader index is the writer's to give).
        writer: how errors name the writer (``"the trainer"``, ``"worker 3, this host's relay"``).
        timeout: seconds to reach the writer and get the ring.
    """

    def __init__(self, address: str, worker_id: int, writer: str, *, timeout: float):
        self.address = address
        self.worker_id = worker_id
        self.writer = writer
        self.timeout = timeout
        self.ring: SnapshotRing | None = None
        self.reader = 0
        self._layout: bytes | None = None
        self._sock: socket.socket | None = None

    def ring_for(self, layout_json: bytes) -> SnapshotRing:
        """The ring of this layout (asked for once per layout)."""
        if self._layout == layout_json:
            return self.ring
        sock = self._connect()
        sock.settimeout(self.timeout)
        try:
            _send_message(sock, {"worker": self.worker_id, "layout": layout_json.decode()})
            reply, fds = _recv_message(sock)
        except (OSError, EOFError) as err:
            raise PeerDiedError(
                f"worker {self.worker_id} did not get its host's snapshots from {self.writer} "
                f"within {self.timeout:g} s ({err})"
            ) from None
        finally:
            sock.settimeout(None)
        if "error" in reply:
            raise SyncTimeoutError(f"worker {self.worker_id}: {self.writer} {reply['error']}")
        layout, extra_keys = decode_layout(layout_json)
        *data, control = [
            _from_fd(fd, n, torch.uint8) for fd, n in zip(fds, reply["sizes"], strict=True)
        ]
        buffers = [FlatBuffer(layout, d, extra_keys=extra_keys) for d in data]
        for buffer in buffers:
            _make_read_only(buffer)
        self.ring = SnapshotRing(buffers, control.view(torch.int64))
        self.reader, self._layout = reply["reader"], layout_json
        return self.ring

    def wait_published(self, version: int) -> None:
        """Block until the ring holds ``version`` or newer; PeerDiedError if the writer dies."""
        while self.ring.published_version < version:
            readable, _, _ = select.select([self._sock], [], [], 0.001)
            if readable and not self._sock.recv(1, socket.MSG_PEEK):
                raise self._lost()

    def watch(self) -> PeerDiedError:
        """Block until the writer is gone (a connection of its own, never used to ask, ends);
        the error that says so. Run it on a thread of its own."""
        try:
            sock = self._open()
        except PeerDiedError as err:
            return err
        with sock, contextlib.suppress(OSError):
            while sock.recv(1):
                pass
        return self._lost()

    def _lost(self) -> PeerDiedError:
        return PeerDiedError(
            f"worker {self.worker_id} lost {self.writer}, which published its host's snapshots "
            "(its process has died): no further update reaches this worker"
        )

    def _connect(self) -> socket.socket:
        if self._sock is None:
            self._sock = self._open()
        return self._sock

    def _open(self) -> socket.socket:
        deadline = time.monotonic() + self.timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect("\0" + self.address)
                return sock
            except OSError as err:
                sock.close()
                if time.monotonic() >= deadline:
                    raise PeerDiedError(
                        f"worker {self.worker_id} cannot reach {self.writer} on this host within "
                        f"{self.timeout:g} s (socket {self.address!r}: {err})"
                    ) from None
                time.sleep(0.05)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
