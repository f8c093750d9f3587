"""symtune: symbol tuning and TART on one sharded JAX/Flax trainer."""

__version__ = "0.1.0"
