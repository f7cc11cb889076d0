"""The structure registry: one list of structures for plans, spaces and profiles, and what each needs
from a target to run faster."""

from __future__ import annotations

import pytest

from autoprune.errors import UnknownNameError
from autoprune.hardware.schema import SPARSITY_KINDS
from autoprune.pruning.plan import STRUCTURES as PLAN_STRUCTURES
from autoprune.search.space import STRUCTURES as SPACE_STRUCTURES
from autoprune.structures import STRUCTURE_NAMES, STRUCTURES, nm_support_kind


def test_one_list_everywhere():
    assert tuple(STRUCTURES.names()) == tuple(sorted(STRUCTURE_NAMES))
    assert PLAN_STRUCTURES == SPACE_STRUCTURES == STRUCTURE_NAMES
    assert nm_support_kind("2:4") in SPARSITY_KINDS
    assert STRUCTURES.get("unstructured").sparsity_support in SPARSITY_KINDS


def test_unknown_structure_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match=r"unknown structure .blocks.; valid: channel, keep, nm, unstructured"):
        STRUCTURES.get("blocks")


@pytest.mark.parametrize("name,support,nm,fast", [
    ("keep", {"none"}, "2:4", False),
    ("channel", {"none"}, "2:4", True),           # dense kernels turn fewer channels into speed
    ("unstructured", {"none"}, "2:4", False),     # zeros in dense kernels buy nothing
    ("unstructured", {"unstructured"}, "2:4", True),
    ("nm", {"none"}, "2:4", False),
    ("nm", {"nm-2:4"}, "2:4", True),
    ("nm", {"nm-2:4"}, "1:4", False),             # the target supports 2:4 only
])
def test_what_a_target_needs(name, support, nm, fast):
    assert STRUCTURES.get(name).speeds_up_on(support, nm) is fast
    assert STRUCTURES.get(name).physical is (name == "channel")
