"""sweet_jax: early exits on the shared encoder — SWEET, Early-Exit and Multi-Model (floor 2)."""
