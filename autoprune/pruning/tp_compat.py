"""Where Torch-Pruning's dependency graph crashes on a real model, and how discovery goes on without it.

Torch-Pruning 1.6 maps channel indices through concatenations, splits and reshapes by inferring channel counts
from the traced graph. On some real models that inference returns ``None`` or 0, and the mapping crashes:

* torchvision's ShuffleNetV2: the channel shuffle's 5-D ``view`` gives 0 channels, ``ZeroDivisionError``
  in ``update_reshape_index_mapping``;
* timm's DPN: a concat input of unknown width, ``TypeError`` (``int + None``) in ``update_concat_index_mapping``.

It also maps a ``torch.split``'s chunks to its consumers in the order it found the consumers while tracing, not
in the order of the chunks they read: on timm's MixNet (a split into convs of different kernel sizes, then a
concatenation) a channel of the first chunk was mapped onto the second chunk's conv, and the probe kept 23 of
39 groups whole. And its split pruner writes the new chunk offsets onto itself (``self.offsets``), not onto the
split, so after one group was pruned the next was mapped through the old chunk boundaries and refused as
emptying a layer. :func:`_split_in_order` sorts a split's consumers by the chunk each reads (its autograd
``output_nr``) and re-derives the offsets from the split's current sizes before the mapping runs.

On timm's ReXNet (an in-place add into a slice of each block's output) Torch-Pruning's search for one group
never converges: every path re-maps the channels to another index list, each kept as a new entry, past 20,000
entries in 40 s (the largest group of ResNet-50 has 33, of DenseNet-121 102), and discovery ran for hours.
The larger of :data:`MAX_GROUP_ENTRIES` and :data:`ENTRIES_PER_NODE` per graph node bounds a group's search
(Swin's streams legitimately pass 2,147 and 4,493 entries before Torch-Pruning merges them, in about a second):
past it the group raises :class:`RunawayGroupError`, and
discovery keeps that root whole with the reason. On timm's LeViT at 64 px the search instead multiplies one
entry's index list at every flatten it maps (past 10 GB), and comparing those lists takes the time:
:data:`MAX_MAPPED_INDICES` bounds one mapping's list and :data:`MAX_GROUP_INDICES` the group's lists together.

:func:`install` guards each node's mapping: a node whose mapping
crashes keeps Torch-Pruning's default (identity) mapping and is recorded, and every group whose channels pass
through it is kept whole (:func:`autoprune.pruning.groups.build_index`), with the node and the error as the
reason. The rest of the model stays prunable.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

#: The per-node mapping functions of ``torch_pruning.dependency.index_mapping`` that are guarded.
_MAPPERS = ("update_concat_index_mapping", "update_split_index_mapping", "update_reshape_index_mapping",
            "update_unbind_index_mapping", "update_expand_index_mapping", "update_slice_index_mapping")
_ERRORS = (ZeroDivisionError, TypeError, IndexError, ValueError, KeyError, AttributeError)


@dataclass
class MappingFaults:
    """Nodes whose index mapping Torch-Pruning could not build: ``id(node) -> one line``."""

    by_node: dict[int, str] = field(default_factory=dict)

    def reason_for(self, tp_group) -> str | None:
        """Why a Torch-Pruning group cannot be pruned, if its channels pass through a faulty node."""
        for item in tp_group:
            for node in (item.dep.source, item.dep.target):
                why = self.by_node.get(id(node))
                if why:
                    return why
        return None


_INSTALLED: list[bool] = []
#: Entries a Torch-Pruning group may reach before its search is called runaway (see the module docstring).
MAX_GROUP_ENTRIES = 2000
#: ... or this many per node of the model's graph, whichever is larger (swin_v2_t: 1,070 nodes).
ENTRIES_PER_NODE = 8
_ENTRY_LIMIT = [MAX_GROUP_ENTRIES]  # the current graph's bound, set by the get_pruning_group wrapper
#: Channel indices one flatten mapping may produce (a flatten before a classifier: VGG's 512 x 7 x 7 = 25,088).
MAX_MAPPED_INDICES = 1_000_000
#: Channel indices a group's entries may hold together (DenseNet-121's largest group: about 10^5).
MAX_GROUP_INDICES = 2_000_000


class RunawayGroupError(RuntimeError):
    """Torch-Pruning's dependency search for one group did not converge."""


def install() -> None:
    """Guard Torch-Pruning's per-node index mapping, once per process (idempotent).

    ``DependencyGraph.get_pruning_group`` re-runs the mapping on every call, so the guard has to stay for the
    graph's lifetime, not only while it is built. A guarded node that crashes is recorded on its graph
    (:func:`faults_of`) and keeps the default mapping; a node that does not crash behaves exactly as before.
    """
    if _INSTALLED:
        return
    from torch_pruning.dependency import index_mapping as im

    def guard(fn):
        @functools.wraps(fn)
        def wrapper(graph, node, *args, **kwargs):
            try:
                return fn(graph, node, *args, **kwargs)
            except _ERRORS as exc:
                label = getattr(node, "name", None) or type(getattr(node, "module", node)).__name__
                text = str(exc).splitlines()[0][:80] if str(exc) else ""
                faults_of(graph).by_node.setdefault(
                    id(node), f"Torch-Pruning cannot map channels through {label} ({type(exc).__name__}: {text})")
                return None

        wrapper.__autoprune_guard__ = True  # type: ignore[attr-defined]
        return wrapper

    for name in _MAPPERS:
        fn = getattr(im, name, None)
        if fn is not None and not getattr(fn, "__autoprune_guard__", False):
            inner = {"update_reshape_index_mapping": _with_view_sizes,
                     "update_split_index_mapping": _split_in_order}.get(name, lambda f: f)(fn)
            setattr(im, name, guard(inner))
    if not getattr(im.update_index_mapping, "__autoprune_guard__", False):
        im.update_index_mapping = _cached_update(im.update_index_mapping)
    from torch_pruning.dependency.group import Group

    if not getattr(Group.add_dep, "__autoprune_guard__", False):
        Group.add_dep = _bounded_add(Group.add_dep)
    from torch_pruning.dependency.graph import DependencyGraph

    if not getattr(DependencyGraph.get_pruning_group, "__autoprune_guard__", False):
        DependencyGraph.get_pruning_group = _sized_search(DependencyGraph.get_pruning_group)
    if not getattr(im._FlattenIndexMapping.__call__, "__autoprune_guard__", False):
        im._FlattenIndexMapping.__call__ = _bounded_flatten(im._FlattenIndexMapping.__call__)
    _INSTALLED.append(True)


def _channel_signature(graph) -> tuple:
    """Everything Torch-Pruning's index mapping reads that pruning changes: weight shapes, concat/split sizes,
    slice bounds, and the unwrapped parameters' shapes."""
    sig = []
    for module in graph.module2node:
        w = getattr(module, "weight", None)
        if w is not None and hasattr(w, "shape"):
            sig.append(tuple(w.shape))
        for attr in ("concat_sizes", "split_sizes", "offsets", "start", "end", "step"):
            v = module.__dict__.get(attr) if hasattr(module, "__dict__") else None
            if v is not None:
                sig.append((attr, tuple(v) if isinstance(v, list) else v))
    for u in getattr(graph, "unwrapped_parameters", None) or ():
        sig.append(tuple(u.parameters.shape))
    return tuple(sig)


def _cached_update(fn):
    """``update_index_mapping(graph)``, skipped while nothing it reads has changed since its last run.

    ``DependencyGraph.get_pruning_group`` re-runs the whole graph's index mapping on every call. On
    DenseNet-121 (58 concatenations) that was 150 of the 300 s its check took: 1,566 calls, each
    re-mapping every concatenation, though the channel counts change only when something is pruned.
    """

    @functools.wraps(fn)
    def wrapper(graph, *args, **kwargs):
        sig = _channel_signature(graph)
        if getattr(graph, "_autoprune_mapping_sig", None) == sig:
            return None
        out = fn(graph, *args, **kwargs)
        graph._autoprune_mapping_sig = _channel_signature(graph)
        return out

    wrapper.__autoprune_guard__ = True  # type: ignore[attr-defined]
    return wrapper


class _SizedGradFn:
    """A view's ``grad_fn`` with ``_saved_self_sizes`` read from the ``_saved_self_sym_sizes`` newer torch saves."""

    def __init__(self, grad_fn, sizes: tuple[int, ...]) -> None:
        self._grad_fn, self._saved_self_sizes = grad_fn, sizes

    def __getattr__(self, name: str):
        return getattr(self._grad_fn, name)


def _with_view_sizes(fn):
    """Give Torch-Pruning's reshape mapping the input sizes it checks, under torch >= 2.x's attribute name.

    ``update_reshape_index_mapping`` maps a reshape only when its input is 1-D or a 4-D ``(N, C, H, W)`` whose
    ``C*H*W`` is the output's channels (a flatten before a classifier), reading ``grad_fn._saved_self_sizes``.
    torch 2.13's ``ViewBackward0`` saves ``_saved_self_sym_sizes`` instead, so Torch-Pruning falls back to a
    legacy path with no check and maps every reshape as a flatten: on Swin-T's window partitions that builds
    index lists 32 times longer at each pass and runs out of memory (over 10 GB at 64x64 px).
    """

    @functools.wraps(fn)
    def wrapper(graph, node, *args, **kwargs):
        grad_fn = getattr(node, "grad_fn", None)
        sym = getattr(grad_fn, "_saved_self_sym_sizes", None) if grad_fn is not None else None
        if sym is None or hasattr(grad_fn, "_saved_self_sizes"):
            return fn(graph, node, *args, **kwargs)
        try:
            sizes = tuple(int(v) for v in sym)
        except (TypeError, ValueError):
            return fn(graph, node, *args, **kwargs)
        node.grad_fn = _SizedGradFn(grad_fn, sizes)
        try:
            return fn(graph, node, *args, **kwargs)
        finally:
            node.grad_fn = grad_fn

    return wrapper


def _bounded_add(fn):
    """``Group.add_dep`` that raises :class:`RunawayGroupError` past :data:`MAX_GROUP_ENTRIES` entries or
    :data:`MAX_GROUP_INDICES` indices."""

    @functools.wraps(fn)
    def wrapper(group, dep, idxs, *args, **kwargs):
        if len(group._group) >= _ENTRY_LIMIT[0]:
            raise RunawayGroupError(f"search passed {_ENTRY_LIMIT[0]} entries without converging")
        group._autoprune_indices = getattr(group, "_autoprune_indices", 0) + len(idxs)
        if group._autoprune_indices > MAX_GROUP_INDICES:
            raise RunawayGroupError(f"search passed {MAX_GROUP_INDICES:,} channel indices without converging")
        return fn(group, dep, idxs, *args, **kwargs)

    wrapper.__autoprune_guard__ = True  # type: ignore[attr-defined]
    return wrapper


def _sized_search(fn):
    """``DependencyGraph.get_pruning_group`` with the entry bound sized to this graph."""

    @functools.wraps(fn)
    def wrapper(graph, *args, **kwargs):
        _ENTRY_LIMIT[0] = max(MAX_GROUP_ENTRIES, ENTRIES_PER_NODE * len(getattr(graph, "module2node", ())))
        return fn(graph, *args, **kwargs)

    wrapper.__autoprune_guard__ = True  # type: ignore[attr-defined]
    return wrapper


def _bounded_flatten(fn):
    """A flatten mapping that raises :class:`RunawayGroupError` past :data:`MAX_MAPPED_INDICES` indices."""

    @functools.wraps(fn)
    def wrapper(mapping, idxs):
        out = fn(mapping, idxs)
        if len(out) > MAX_MAPPED_INDICES:
            raise RunawayGroupError(f"a flatten mapped its channels to over {MAX_MAPPED_INDICES:,} indices")
        return out

    wrapper.__autoprune_guard__ = True  # type: ignore[attr-defined]
    return wrapper


def _chunk_read(consumer, split_grad_fn) -> int | None:
    """Which output of ``split_grad_fn`` the traced ``consumer`` node reads (None: none, or several)."""
    fn = getattr(consumer, "grad_fn", None)
    nrs = {nr for f, nr in (getattr(fn, "next_functions", None) or ()) if f is not None and f is split_grad_fn}
    return nrs.pop() if len(nrs) == 1 else None


def _split_in_order(fn):
    """Run Torch-Pruning's split mapping with offsets from the split's current sizes and the split's consumers in
    the order of the chunks they read (see the module docstring; left as traced when a consumer's chunk cannot
    be told)."""

    @functools.wraps(fn)
    def wrapper(graph, node, *args, **kwargs):
        sizes = getattr(getattr(node, "module", None), "split_sizes", None)
        if sizes is not None and None not in sizes:
            node.module.offsets = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        outputs = getattr(node, "outputs", None)
        grad_fn = getattr(node, "grad_fn", None)
        if outputs and grad_fn is not None and len(outputs) > 1:
            chunks = [_chunk_read(o, grad_fn) for o in outputs]
            if None not in chunks and len(set(chunks)) == len(chunks):
                node.outputs = [o for _, o in sorted(zip(chunks, outputs), key=lambda t: t[0])]
        return fn(graph, node, *args, **kwargs)

    return wrapper


def faults_of(graph) -> MappingFaults:
    """The mapping faults recorded on a Torch-Pruning ``DependencyGraph`` (empty when none)."""
    faults = getattr(graph, "_autoprune_mapping_faults", None)
    if faults is None:
        faults = MappingFaults()
        graph._autoprune_mapping_faults = faults
    return faults


__all__ = ["ENTRIES_PER_NODE", "MAX_GROUP_ENTRIES", "MAX_GROUP_INDICES", "MAX_MAPPED_INDICES", "MappingFaults",
           "RunawayGroupError", "faults_of", "install"]
