"""Rollout: vLLM generator actors and the verified learner -> generator weight sync."""
