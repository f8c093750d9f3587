"""Preemption: SIGTERM becomes a request to save at the next step boundary and stop; in a
multi-process job JAX's preemption service agrees on that step for every process."""

from __future__ import annotations

import signal
from typing import Any

import jax
from jax.experimental import multihost_utils

from symtune.errors import UserError


class _Preemption:
    requested = False
    installed = False
    previous_handler: Any = None


def install_preemption_handler() -> None:
    """Turns SIGTERM into a request to save at the next step boundary and exit (see preemption_requested).

    In a multi-process job JAX's preemption service already catches SIGTERM on every process and
    agrees on one step for all of them, so nothing is installed there. Under SLURM ask for the
    signal ahead of the time limit (sbatch --signal=TERM@120). Call from the main thread.
    """
    if jax.distributed.is_initialized():
        if not jax.config.jax_enable_preemption_service:
            raise UserError("multi-process preemption needs jax_enable_preemption_service=True (JAX's default)")
        return
    if not _Preemption.installed:
        _Preemption.previous_handler = signal.signal(signal.SIGTERM, _on_sigterm)
        _Preemption.installed = True


def _on_sigterm(signum: int, frame: Any) -> None:
    # Only a flag: the step in progress must finish before its state can be saved.
    _Preemption.requested = True


def preemption_requested(step: int | None = None) -> bool:
    """True from the step at which to save and stop after SIGTERM; every process must call it at
    every step with the same step number (in multi-process jobs it decides the step together).
    A single process may leave out the step."""
    if step is None:
        if jax.distributed.is_initialized():
            raise ValueError("in a multi-process job pass the step: preemption_requested(step)")
        return _Preemption.requested
    if not _Preemption.requested and jax.distributed.is_initialized():
        _Preemption.requested = multihost_utils.reached_preemption_sync_point(step)
    return _Preemption.requested


def remove_preemption_handler() -> None:
    """Puts back the SIGTERM handler that was there before and forgets any request."""
    if _Preemption.installed:
        signal.signal(signal.SIGTERM, _Preemption.previous_handler)
    _Preemption.installed = False
    _Preemption.requested = False
    _Preemption.previous_handler = None
