"""The smallest change to mesh, remat or microbatching that makes a run fit its chips."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Mapping

from symtune.models.config import REMAT_POLICIES
from symtune.plan.memory import Layout, Memory, Workload, divisors
from symtune.plan.topology import Topology, larger_slices

# Rough slowdown of each change, to rank the layouts that fit: remat recomputes (part of) the
# forward pass, tensor parallelism all-reduces activations in every block, microbatches shrink the
# matmuls, a larger fsdp axis all-gathers weights from more chips (mostly overlapped with compute).
REMAT_COST = {"none": 0.0, "save_projections": 0.15, "save_nothing": 0.33}
DOUBLING_COST = {"fsdp": 0.02, "microbatches": 0.05, "tensor": 0.1}


def rules_for(fsdp: int, tensor: int) -> str:
    """The rules preset a mesh with these fsdp and tensor sizes calls for."""
    return {(False, False): "dp", (True, False): "fsdp", (False, True): "tp", (True, True): "fsdp+tp"}[
        (fsdp > 1, tensor > 1)]


def candidate_layouts(current: Layout, batch_size: int) -> Iterator[Layout]:
    """Every layout on the same chips and replicas: mesh splits, remat policies, microbatch counts."""
    chips = current.data * current.fsdp * current.tensor
    for tensor in divisors(chips):
        for fsdp in divisors(chips // tensor):
            data = chips // tensor // fsdp
            same_mesh = (data, fsdp, tensor) == (current.data, current.fsdp, current.tensor)
            shards = current.replica * data * fsdp
            rows = batch_size // shards if batch_size % shards == 0 else 0
            for microbatches in divisors(rows):
                if microbatches & (microbatches - 1) and microbatches != current.microbatches:
                    continue  # powers of two, and the configured count
                for remat in REMAT_POLICIES:
                    yield Layout(current.replica, data, fsdp, tensor, current.rules if same_mesh else
                                 rules_for(fsdp, tensor), remat, microbatches)


def _mesh(layout: Layout) -> tuple:
    return layout.data, layout.fsdp, layout.tensor, layout.rules


def change_cost(current: Layout, candidate: Layout) -> tuple[int, float]:
    """(how many of mesh, remat and microbatches change; the estimated slowdown)."""
    knobs = ((_mesh(candidate) != _mesh(current)) + (candidate.remat != current.remat)
             + (candidate.microbatches != current.microbatches))
    slowdown = REMAT_COST[candidate.remat] - REMAT_COST[current.remat]
    for name, cost in DOUBLING_COST.items():
        slowdown += cost * math.log2(getattr(candidate, name) / getattr(current, name))
    return knobs, slowdown


def fitting_changes(workload: Workload, current: Layout, budget: float) -> Iterator[tuple[Layout, Memory]]:
    """The layouts whose estimate fits, fewest changed knobs first, then the least slowdown."""
    candidates = sorted((c for c in candidate_layouts(current, workload.batch_size) if c != current),
                        key=lambda c: change_cost(current, c))
    for candidate in candidates:
        if not workload.valid(candidate):
            continue
        params, grads, optimizer = workload.state_bytes(candidate)
        if params + grads + optimizer > budget:
            continue  # cannot fit whatever the activations: skip the tracing
        memory = workload.memory(candidate)
        if memory.total <= budget:
            yield candidate, memory


def smallest_fitting_change(workload: Workload, current: Layout, budget: float) -> tuple[Layout, Memory] | None:
    """The first of `fitting_changes`; None if none fits."""
    return next(fitting_changes(workload, current, budget), None)


def smallest_fitting_slice(workload: Workload, current: Layout, topology: Topology,
                           budget: float) -> tuple[Topology, Layout, Memory] | None:
    """The smallest larger slice of the same chip whose estimate fits: the configured layout with
    its fsdp axis grown to the new chips, else the smallest change there; None if none up to the
    largest slice does."""
    for larger in larger_slices(topology):
        fsdp = current.fsdp * larger.chips // topology.chips
        grown = dataclasses.replace(current, fsdp=fsdp, rules=rules_for(fsdp, current.tensor))
        if workload.valid(grown) and (memory := workload.memory(grown)).total <= budget:
            return larger, grown, memory
        change = smallest_fitting_change(workload, grown, budget)
        if change:
            return larger, *change
    return None


def describe_changes(current: Layout, candidate: Layout, model_overrides: Mapping[str, Any]) -> list[str]:
    """What to change, one line each, with the gin overrides that do it."""
    lines = []
    if _mesh(candidate) != _mesh(current):
        lines.append(f"mesh data={candidate.data} fsdp={candidate.fsdp} tensor={candidate.tensor} (rules "
                     f"{candidate.rules}): --gin.MeshConfig.data={candidate.data} --gin.MeshConfig.fsdp="
                     f"{candidate.fsdp} --gin.MeshConfig.tensor={candidate.tensor} "
                     f"--gin.MeshConfig.rules=\"'{candidate.rules}'\"")
    if candidate.remat != current.remat:
        overrides = {**model_overrides, "remat_policy": candidate.remat}
        lines.append(f"remat {candidate.remat}: --gin.model_config.overrides=\"{overrides!r}\"")
    if candidate.microbatches != current.microbatches:
        lines.append(f"{candidate.microbatches} microbatches: --gin.TrainerConfig.microbatches="
                     f"{candidate.microbatches}")
    return lines
