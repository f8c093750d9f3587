"""TART: a task-agnostic reasoning head trained on synthetic logistic regression."""

__all__ = ["TartClassifier"]


def __getattr__(name: str):
    # `from tart import TartClassifier` loads JAX on first use only, not on every `import tart.<module>`.
    if name == "TartClassifier":
        import os
        import sys

        from symtune.hostenv import quiet_tensorflow, runs_on_cpu_only

        quiet_tensorflow()  # as the `tart` commands do
        if "jax" not in sys.modules and runs_on_cpu_only():
            # Also as they do: JAX skips the installed TPU/CUDA plugins' failing start-up probes.
            os.environ.setdefault("JAX_PLATFORMS", "cpu")
        from tart.predict import TartClassifier

        return TartClassifier
    raise AttributeError(f"module 'tart' has no attribute {name!r}")
