"""The six managers (environment, rollout, training, optimizer, stats, evaluation) and the non-finite guard."""
