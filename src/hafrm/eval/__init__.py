"""Scoring pairs and responses with a trained model and the statistics of the scores: per-pair scores (scores,
evaluation), accuracies, intervals and paired tests (metrics), RewardBench's weighting (rewardbench) and the batch
scorer of any sequence-classification reward model that serving uses (scoring)."""
