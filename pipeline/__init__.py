"""pipeline: what every experiment needs, method-agnostic (data, training loop, checkpoints, sharding, reporting)."""
