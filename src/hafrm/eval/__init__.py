"""Scoring pairs and responses with a trained model and the statistics of the scores: per-pair scores, accuracies
and paired tests (metrics), RewardBench's weighting, Best-of-N recall and the batch scorer serving uses."""
