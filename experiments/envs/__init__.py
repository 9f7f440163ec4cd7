"""Vectorised, torch-native environments used by the experiments."""

from experiments.envs.cartpole import BatchedCartPole

__all__ = ["BatchedCartPole"]
