"""Training: the one Fabric loop, checkpoints, the teacher-output cache, and the two-stage schedule."""
