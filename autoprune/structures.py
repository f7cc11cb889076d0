"""The structures a prunable group can take, in one registry: how each is applied, which sparsity
support a target needs to turn it into speed, and how the cost model scales a kernel under it.

Light on purpose (no torch): plans, search spaces, the cost model and hardware profiles all read it.

========== ============ =============================== ===================================
structure  physical?    a target turns it into speed     the cost model scales the kernel
========== ============ =============================== ===================================
keep       no change    (nothing to gain)                not at all
channel    yes: smaller any dense kernel                 by its smaller channel counts
unstructured no: masks  ``unstructured`` support          by weight density, where supported
nm         no: masks    ``nm-N:M`` support (``nm-2:4``)   by N/M of the compute, where supported
========== ============ =============================== ===================================
"""

from __future__ import annotations

from dataclasses import dataclass

from autoprune.registry import Registry

__all__ = ["STRUCTURES", "STRUCTURE_NAMES", "Structure", "nm_support_kind"]


@dataclass(frozen=True)
class Structure:
    """One structure.

    Attributes:
        name: As plans, spaces and ``--space`` files write it.
        physical: Channels are removed, so the model is physically smaller (else zeros in masks).
        uses_ratio: The plan's ``ratio`` is used (``nm`` fixes its sparsity by its pattern).
        applied_by: How :func:`autoprune.pruning.prune_model` applies it.
        sparsity_support: The ``sparsity_support`` kind a hardware profile must list for the target's
            kernels to run it faster (``None``: dense kernels already do, or nothing changes);
            ``nm`` names its pattern, see :func:`nm_support_kind`.
    """

    name: str
    physical: bool
    uses_ratio: bool
    applied_by: str
    sparsity_support: str | None

    def speeds_up_on(self, support: frozenset[str] | set[str] | tuple[str, ...], nm: str = "2:4") -> bool:
        """Whether a target whose profile lists ``support`` runs this structure faster than dense."""
        if self.name == "keep":
            return False
        if self.sparsity_support is None:
            return True
        kind = nm_support_kind(nm) if self.name == "nm" else self.sparsity_support
        return kind in support


def nm_support_kind(pattern: str) -> str:
    """The ``sparsity_support`` kind of an ``N:M`` pattern: ``"2:4"`` → ``"nm-2:4"``."""
    return f"nm-{pattern}"


STRUCTURES: Registry[Structure] = Registry("structure")
for _s in (
    Structure("keep", physical=False, uses_ratio=False, applied_by="left dense", sparsity_support=None),
    Structure("channel", physical=True, uses_ratio=True,
              applied_by="Torch-Pruning's dependency graph removes the group's lowest-scoring channels",
              sparsity_support=None),
    Structure("unstructured", physical=False, uses_ratio=True,
              applied_by="a weight mask zeroes the lowest-scoring weights of each member",
              sparsity_support="unstructured"),
    Structure("nm", physical=False, uses_ratio=False,
              applied_by="a mask keeps the top N of every M weights along the input channels",
              sparsity_support="nm"),
):
    STRUCTURES.register(_s.name, _s)

#: The structure names, in the order plans and spaces list them.
STRUCTURE_NAMES: tuple[str, ...] = ("keep", "channel", "unstructured", "nm")
