"""One contiguous buffer for a whole model: the unit every transport moves.

Sending a model tensor by tensor costs a message (or a kernel launch) per tensor; sending it as
one block costs one memcpy. :class:`FlatLayout` computes, once per model, where each tensor lives
in a single byte buffer (64-byte aligned, any mix of dtypes), followed by a small region for the
pickled extra states. :class:`FlatBuffer` is such a buffer: it can be written from
:class:`~weightsync.weights.FlatWeights`, read back as views (no copy), and pickled to another
process, in which case only its shared-memory handle travels.

Binding a model to a buffer (:func:`alias_into`) re-points the model's tensors into it, keeping
their ``nn.Parameter`` objects, so that later copies of the whole model are one ``copy_`` call.
"""

from __future__ import annotations

import ctypes
import pickle
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from weightsync.shm import shared_zeros
from weightsync.weights import FlatWeights, weight_mismatches

_ALIGN = 64
_LENGTH_BYTES = 8  # int64 length prefix of the extra-state region


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


#: Below this many bytes a copy is one ``memmove`` on the calling thread (waking helper threads
#: costs more than it saves, and far more when the machine's cores are all busy).
PARALLEL_COPY_MIN_BYTES = 16 << 20
_copy_pool: ThreadPoolExecutor | None = None
_copy_pool_lock = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    global _copy_pool
    with _copy_pool_lock:
        if _copy_pool is None or _copy_pool._max_workers < workers:
            _copy_pool = ThreadPoolExecutor(workers, thread_name_prefix="weightsync-copy")
        return _copy_pool


def copy_bytes(dst: torch.Tensor, src: torch.Tensor, threads: int | None = None) -> None:
    """Copy a contiguous CPU byte tensor into another of the same size, as fast as memory allows.

    glibc's ``memmove`` moves large blocks about twice as fast as a single-threaded
    ``Tensor.copy_``, and it releases the GIL, so a large copy is split into ``threads`` chunks
    (default ``torch.get_num_threads()``: a worker limited to one thread copies on one) run in
    parallel; small copies are one call. Anything else falls back to ``dst.copy_(src)``.
    """
    nbytes = dst.numel()
    if not (
        dst.device.type == src.device.type == "cpu"
        and dst.dtype == src.dtype == torch.uint8
        and src.numel() == nbytes
        and dst.is_contiguous()
        and src.is_contiguous()
    ):
        with torch.no_grad():
            dst.copy_(src)
        return
    d, s = dst.data_ptr(), src.data_ptr()
    threads = max(1, torch.get_num_threads() if threads is None else threads)
    if threads == 1 or nbytes < PARALLEL_COPY_MIN_BYTES:
        ctypes.memmove(d, s, nbytes)
        return
    step = _align(-(-nbytes // threads))
    chunks = [(i, min(step, nbytes - i)) for i in range(0, nbytes, step)]
    helpers = [_pool(threads - 1).submit(ctypes.memmove, d + i, s + i, n) for i, n in chunks[1:]]
    ctypes.memmove(d, s, chunks[0][1])  # the calling thread copies the first chunk itself
    for done in helpers:
        done.result()


#: Re-pointing a tensor at a snapshot costs about a microsecond, copying a kilobyte about a tenth
#: of one: below this many bytes per tensor, a worker copies a snapshot (one memmove) rather than
#: adopting it tensor by tensor (measured in BENCHMARKS.md, model ``small-1000``).
ALIAS_MIN_BYTES_PER_TENSOR = 16 * 1024


@dataclass(frozen=True)
class TensorSlot:
    """Where one tensor lives inside a flat buffer."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class FlatLayout:
    """The placement of a model's tensors (and extra-state bytes) in one byte buffer."""

    slots: tuple[TensorSlot, ...]
    tensor_bytes: int
    extra_capacity: int

    @classmethod
    def for_weights(cls, weights: FlatWeights) -> FlatLayout:
        """Lay out ``weights``; the extra-state region gets room for twice today's states."""
        slots, offset = [], 0
        for key, tensor in weights.tensors.items():
            nbytes = tensor.numel() * tensor.element_size()
            slots.append(TensorSlot(key, tensor.dtype, tuple(tensor.shape), offset, nbytes))
            offset = _align(offset + nbytes)
        extra_capacity = 0
        if weights.extra:
            extra_capacity = _align(2 * len(pickle.dumps(weights.extra)) + 4096)
        return cls(tuple(slots), offset, extra_capacity)

    @property
    def total_bytes(self) -> int:
        return self.tensor_bytes + (
            _LENGTH_BYTES + self.extra_capacity if self.extra_capacity else 0
        )

    @property
    def worth_aliasing(self) -> bool:
        """Whether adopting a snapshot of this layout in place beats copying it out."""
        return self.tensor_bytes >= ALIAS_MIN_BYTES_PER_TENSOR * max(1, len(self.slots))

    @property
    def keys(self) -> list[str]:
        return [slot.key for slot in self.slots]

    def as_meta_weights(self, extra_keys: list[str]) -> FlatWeights:
        """Shape-and-dtype-only stand-ins, to validate a model against this layout."""
        tensors = {s.key: torch.empty(s.shape, dtype=s.dtype, device="meta") for s in self.slots}
        return FlatWeights(tensors, dict.fromkeys(extra_keys))

    def mismatches(self, weights: FlatWeights, extra_keys: list[str]) -> list[str]:
        """Problems (one line per key) if ``weights`` does not fit this layout."""
        if self._fits(weights, extra_keys):  # the per-update case: cheap, no allocation
            return []
        return weight_mismatches(self.as_meta_weights(extra_keys), weights)

    def _fits(self, weights: FlatWeights, extra_keys: list[str]) -> bool:
        tensors = weights.tensors
        return (
            len(tensors) == len(self.slots)
            and weights.extra.keys() == set(extra_keys)
            and all(
                (t := tensors.get(s.key)) is not None and t.dtype == s.dtype and t.shape == s.shape
                for s in self.slots
            )
        )

    def allocate(self, *, shared: bool, device: torch.device | str = "cpu") -> torch.Tensor:
        """A zeroed byte buffer for this layout, in shared memory when ``shared`` (a
        SharedMemoryError, leaving nothing behind, when ``/dev/shm`` is too small)."""
        nbytes = max(self.total_bytes, 1)
        if shared and torch.device(device).type == "cpu":
            return shared_zeros(nbytes, f"a flat buffer of {len(self.slots)} tensors")
        data = torch.zeros(nbytes, dtype=torch.uint8, device=device)
        return data.share_memory_() if shared else data


class FlatBuffer:
    """A byte buffer holding one model's weights in a :class:`FlatLayout`.

    Pickling it through ``torch.multiprocessing`` sends the storage handle, never the bytes.
    """

    def __init__(
        self,
        layout: FlatLayout,
        data: torch.Tensor | None = None,
        *,
        extra_keys: list[str] | None = None,
        shared: bool = True,
    ):
        self.layout = layout
        self.extra_keys = list(extra_keys or [])
        self.data = layout.allocate(shared=shared) if data is None else data
        self._views: dict[str, torch.Tensor] | None = None

    @classmethod
    def for_weights(
        cls, weights: FlatWeights, *, shared: bool = True, device: torch.device | str = "cpu"
    ) -> FlatBuffer:
        layout = FlatLayout.for_weights(weights)
        data = layout.allocate(shared=shared, device=device)
        return cls(layout, data, extra_keys=list(weights.extra))

    def __reduce__(self):
        return (_rebuild_flat_buffer, (self.layout, self.data, self.extra_keys))

    @property
    def tensor_region(self) -> torch.Tensor:
        """The bytes of all tensors (the extra-state region excluded)."""
        return self.data[: self.layout.tensor_bytes]

    def views(self) -> dict[str, torch.Tensor]:
        """Each tensor as a view into the buffer (built once, then cached)."""
        if self._views is None:
            views = {}
            for slot in self.layout.slots:
                raw = self.data[slot.offset : slot.offset + slot.nbytes]
                views[slot.key] = raw.view(slot.dtype).view(slot.shape)
            self._views = views
        return self._views

    def read(self) -> FlatWeights:
        """The weights held by the buffer: views (no copy) plus the unpickled extra states."""
        return FlatWeights(self.views(), self.read_extra())

    def mismatches(self, weights: FlatWeights) -> list[str]:
        """Problems if ``weights`` cannot be written into this buffer (empty list if it can)."""
        return self.layout.mismatches(weights, self.extra_keys)

    def write(self, weights: FlatWeights) -> int:
        """Copy ``weights`` in (validated by the caller); returns the tensor bytes copied.

        Tensors already living in this buffer (a bound source model) are not copied again.
        """
        copied = self.write_tensors(weights)
        self.write_extra(weights.extra)
        return copied

    def write_tensors(self, weights: FlatWeights) -> int:
        """The tensor part of :meth:`write`; returns the bytes copied."""
        copied = 0
        with torch.no_grad():
            for key, view in self.views().items():
                src = weights.tensors[key]
                if src.data_ptr() != view.data_ptr():
                    view.copy_(src)
                    copied += view.numel() * view.element_size()
        return copied

    def copy_from(self, other: FlatBuffer) -> None:
        """Copy another buffer of the same layout in one block."""
        copy_bytes(self.data, other.data)

    def write_extra(self, extra: Mapping[str, Any]) -> None:
        cap = self.layout.extra_capacity
        if not cap:
            return
        blob = pickle.dumps(dict(extra))
        if len(blob) > cap:
            raise ValueError(
                f"the modules' extra state grew to {len(blob)} bytes, more than the {cap} bytes "
                "reserved when the model was first registered; re-create the scheme so its "
                "buffers are laid out for the larger state"
            )
        start = self.layout.tensor_bytes
        region = self.data[start + _LENGTH_BYTES : start + _LENGTH_BYTES + len(blob)]
        region.copy_(torch.frombuffer(bytearray(blob), dtype=torch.uint8))
        self.data[start : start + _LENGTH_BYTES].view(torch.int64)[0] = len(blob)

    def read_extra(self) -> dict[str, Any]:
        if not self.layout.extra_capacity:
            return {}
        start = self.layout.tensor_bytes
        length = int(self.data[start : start + _LENGTH_BYTES].view(torch.int64)[0])
        if length == 0:
            return {}
        blob = self.data[start + _LENGTH_BYTES : start + _LENGTH_BYTES + length]
        return pickle.loads(blob.cpu().numpy().tobytes())


def _rebuild_flat_buffer(
    layout: FlatLayout, data: torch.Tensor, extra_keys: list[str]
) -> FlatBuffer:
    return FlatBuffer(layout, data, extra_keys=extra_keys)


def alias_into(live: Mapping[str, torch.Tensor], buffer: FlatBuffer, *, copy: bool = True) -> None:
    """Re-point each live tensor's ``.data`` at its view in ``buffer`` (values copied first).

    The tensor objects (``nn.Parameter`` included) stay the same, so optimizers and hooks that
    hold them keep working; afterwards the whole model is one contiguous block.
    """
    with torch.no_grad():
        for key, view in buffer.views().items():
            tensor = live[key]
            if copy:
                view.copy_(tensor)
            tensor.data = view


def is_aliased(live: Mapping[str, torch.Tensor], buffer: FlatBuffer) -> bool:
    """Whether every live tensor still lives at its place in ``buffer``."""
    return all(live[k].data_ptr() == v.data_ptr() for k, v in buffer.views().items())


def can_alias(live: Mapping[str, torch.Tensor], buffer: FlatBuffer) -> bool:
    """Whether the live tensors may be bound to ``buffer`` (same device, dense layout)."""
    device = buffer.data.device
    return all(
        t.device == device and t.layout == torch.strided and not t.is_sparse for t in live.values()
    )
