"""The policies: actor-critics sized for, and checked against, an env's spaces.

``mlp`` (:class:`ActorCritic`) reads vectors; ``nature_cnn`` (:class:`NatureCNN`) and
``impala_cnn`` (:class:`ImpalaCNN`) read uint8 frames. Each samples categorical or Gaussian
actions as the env's action space is (:class:`Policy`).
"""

from experiments.models.cnn import ImpalaCNN, NatureCNN, PixelPolicy
from experiments.models.mlp import ACTIVATIONS, ActorCritic
from experiments.models.policy import Policy, count_parameters

__all__ = [
    "ACTIVATIONS",
    "ActorCritic",
    "ImpalaCNN",
    "NatureCNN",
    "PixelPolicy",
    "Policy",
    "count_parameters",
]
