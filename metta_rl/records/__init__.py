"""What a run leaves on disk: checkpoints, the run directory, replays."""
