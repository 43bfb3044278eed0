"""Rewards for other programs: the HTTP server (server) and the reward functions RLHF trainers call (rlhf)."""
