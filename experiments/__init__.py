"""RL pieces of the actor-learner experiments: environments, models, rollouts and PPO."""
