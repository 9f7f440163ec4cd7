"""A fingerprint of a model's weights, to prove that workers hold what the trainer holds."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def weights_checksum(module: nn.Module) -> str:
    """A hex digest of every parameter and buffer of ``module`` (names, dtypes, shapes, bytes).

    Equal digests mean bit-identical weights wherever the module lives (CPU or GPU), so a trainer
    can check each worker's copy after a sync without shipping the weights back.
    """
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()
