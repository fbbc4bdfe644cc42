"""Training: mesh and sharding rules, checkpoints, the train loop."""
