"""TPU slices and GPU clusters by name: chips, HBM and peak FLOP/s per chip, hosts."""

from __future__ import annotations

import re
from dataclasses import dataclass

from symtune.errors import UserError
from symtune.train.trainer import PEAK_FLOPS

GiB = 2**30


@dataclass(frozen=True)
class Accelerator:
    """One chip kind from its public spec sheet; slice names count `cores_per_chip` per chip."""

    name: str
    hbm_bytes: int
    peak_flops: float  # dense bf16, per chip
    chips_per_host: int
    cores_per_chip: int = 1
    single_host_chips: int = 0  # slices up to this many chips sit on one host (v5e/v6e: 8)
    sizes: tuple[int, ...] = ()  # the slice sizes that exist (name units); () = any, see parse_topology

    def hosts(self, chips: int) -> int:
        """Hosts (VMs) of a slice or cluster of `chips` chips."""
        if chips <= max(self.single_host_chips, self.chips_per_host):
            return 1
        return -(-chips // self.chips_per_host)


# Cloud TPU system-architecture pages (v4, v5p, v5e, v6e) and NVIDIA's H100 SXM and A100 80GB data
# sheets. Their HBM "GB" are the stacks' GiB. v4 and v5p slice names count TensorCores, 2 per chip;
# JAX sees one device per chip (megacore).
ACCELERATORS: dict[str, Accelerator] = {
    "v4": Accelerator("TPU v4", 32 * GiB, PEAK_FLOPS["tpu v4"], 4, cores_per_chip=2),
    "v5p": Accelerator("TPU v5p", 95 * GiB, PEAK_FLOPS["tpu v5p"], 4, cores_per_chip=2),
    "v5e": Accelerator("TPU v5e", 16 * GiB, PEAK_FLOPS["tpu v5e"], 4, single_host_chips=8,
                       sizes=(1, 4, 8, 16, 32, 64, 128, 256)),
    "v6e": Accelerator("TPU v6e", 32 * GiB, PEAK_FLOPS["tpu v6"], 4, single_host_chips=8,
                       sizes=(1, 4, 8, 16, 32, 64, 128, 256)),
    "H100": Accelerator("NVIDIA H100 80GB", 80 * GiB, PEAK_FLOPS["h100"], 8),
    "A100-80GB": Accelerator("NVIDIA A100 80GB", 80 * GiB, PEAK_FLOPS["a100"], 8),
}
TOPOLOGY_FORMS = ("v4-N or v5p-N (N TensorCores, a multiple of 8), v5e-N or v6e-N (N chips), "
                  "NxH100, NxA100-80GB")


@dataclass(frozen=True)
class Topology:
    """A slice or cluster: how many chips of which kind."""

    name: str
    accelerator: Accelerator
    chips: int

    @property
    def hosts(self) -> int:
        return self.accelerator.hosts(self.chips)

    @property
    def platform(self) -> str:
        """The compiler the slice needs: `tpu` or `cuda`."""
        return "tpu" if self.accelerator.name.startswith("TPU") else "cuda"

    def describe(self) -> str:
        a, s = self.accelerator, lambda n: "s" * (n != 1)
        return (f"{self.name} = {self.chips} {a.name} chip{s(self.chips)} on {self.hosts} host{s(self.hosts)}; "
                f"{a.hbm_bytes / GiB:.0f} GiB HBM and {a.peak_flops / 1e12:.0f} TFLOP/s bf16 per chip")


def parse_topology(name: str) -> Topology:
    """`v5p-128`, `v4-64`, `v5e-16`, `v6e-256`, `8xH100`, `64xA100-80GB`; a UserError naming the valid forms."""
    name = name.strip()
    tpu = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", name)
    gpu = re.fullmatch(r"(\d+)[x×](H100|A100-80GB)", name, re.IGNORECASE)
    if tpu:
        kind, count = tpu.group(1), int(tpu.group(2))
    elif gpu:
        count, kind = int(gpu.group(1)), {"h100": "H100", "a100-80gb": "A100-80GB"}[gpu.group(2).lower()]
    else:
        raise UserError(f"unknown topology {name!r}; use {TOPOLOGY_FORMS} (e.g. v5p-128, 8xH100)")
    acc = ACCELERATORS[kind]
    if acc.sizes and count not in acc.sizes:
        raise UserError(f"{name}: {kind} slices have {', '.join(map(str, acc.sizes))} chips")
    if acc.cores_per_chip > 1 and (count < 8 or count % 8):
        raise UserError(f"{name}: {kind} names count TensorCores, a multiple of 8 (e.g. {kind}-8 = 4 chips, "
                        f"{kind}-128 = 64 chips)")
    if not acc.sizes and acc.cores_per_chip == 1 and not (1 <= count <= 8 or count % 8 == 0):
        raise UserError(f"{name}: use 1 to 8 GPUs or whole 8-GPU hosts (16x{kind}, 64x{kind}, ...)")
    return Topology(name, acc, count // acc.cores_per_chip)


def generation(accelerator: Accelerator) -> str:
    """The accelerator's key in ACCELERATORS: v4, v5p, v5e, v6e, H100, A100-80GB."""
    return next(key for key, acc in ACCELERATORS.items() if acc is accelerator)


def slice_name(accelerator: Accelerator, chips: int) -> str:
    """The name of a slice or cluster of `chips` chips: v5p-16 (TensorCores), v5e-16, 16xH100."""
    kind = generation(accelerator)
    if kind.startswith("v"):
        return f"{kind}-{chips * accelerator.cores_per_chip}"
    return f"{chips}x{kind}"


def larger_slices(topology: Topology, max_chips: int = 4096) -> list[Topology]:
    """Slices of the same chip larger than `topology`, smallest first: the listed sizes where a
    generation has them, else doublings (whole 8-GPU hosts past one host)."""
    acc = topology.accelerator
    sizes = acc.sizes or [2**k for k in range(13) if 2**k <= max_chips]
    names = (slice_name(acc, n) for n in sizes if n > topology.chips)
    return [parse_topology(name) for name in names if _valid(name)]


def _valid(name: str) -> bool:
    try:
        parse_topology(name)
    except UserError:
        return False
    return True
