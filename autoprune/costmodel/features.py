"""Named kernel features: what one fused kernel of an exported graph computes.

A *kernel* is what a runtime launches after fusion (e.g. Conv+BN+ReLU is one
kernel). Features are a frozen dataclass with units in the names, never a
positional list, and are derived from shapes alone, so they are a pure function
of the exported graph.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["OP_CLASSES", "KernelFeatures", "op_class"]

#: Operator classes of the roofline regressor (one efficiency factor each).
OP_CLASSES: tuple[str, ...] = ("conv", "dwconv", "linear", "elementwise", "pooling", "free")


def op_class(op: str, groups: int = 1, cin: int = 1) -> str:
    """Return the roofline class of kernel op type ``op``.

    Args:
        op: Kernel op type as produced by :func:`~autoprune.costmodel.kernels.detect_kernels`
            (``conv``, ``gemm``, ``add``, ``maxpool``, ``avgpool``, ``globalpool``,
            ``concat``, ``reshape``, ``elementwise``).
        groups: Convolution groups.
        cin: Input channels (a conv with ``groups == cin > 1`` is depthwise).
    """
    if op == "conv":
        return "dwconv" if groups > 1 and groups == cin else "conv"
    if op == "gemm":
        return "linear"
    if op in ("maxpool", "avgpool", "globalpool"):
        return "pooling"
    if op == "reshape":
        return "free"
    return "elementwise"


@dataclass(frozen=True)
class KernelFeatures:
    """Shape features of one kernel at batch 1.

    Attributes:
        op: Kernel op type (``conv``, ``gemm``, ``add``, ``maxpool``, ``avgpool``,
            ``globalpool``, ``concat``, ``reshape``, ``elementwise``).
        fused: Post-ops fused into the kernel, e.g. ``("add", "relu")``.
        cin: Input channels (features for ``gemm``).
        cout: Output channels (features for ``gemm``).
        kernel_size: Square kernel side (1 for non-convolutions).
        stride: Spatial stride (1 for non-convolutions).
        groups: Convolution groups (1 otherwise).
        in_hw: Input spatial size ``(H, W)``; ``(1, 1)`` for ``gemm``.
        out_hw: Output spatial size ``(H, W)``.
        macs: Multiply-accumulates.
        bytes_moved: Bytes read and written: inputs + weights + outputs (+ residual).
        bytes_per_element: Element size used for ``bytes_moved`` (4 for fp32).
        cin_mod8: ``cin % 8`` (vector-width alignment).
        cout_mod8: ``cout % 8``.
        weight_density: Fraction of non-zero weights (1.0 dense; 1.0 for ops without weights).
        nm_pattern: ``"2:4"`` when the weights follow an N:M pattern, else ``""``.
    """

    op: str
    fused: tuple[str, ...]
    cin: int
    cout: int
    kernel_size: int
    stride: int
    groups: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    macs: int
    bytes_moved: int
    bytes_per_element: int = 4
    cin_mod8: int = 0
    cout_mod8: int = 0
    weight_density: float = 1.0
    nm_pattern: str = ""

    @property
    def op_class(self) -> str:
        """The roofline class (see :data:`OP_CLASSES`)."""
        return op_class(self.op, self.groups, self.cin)

    @property
    def config_key(self) -> str:
        """A key shared by kernels with the same configuration (LUT entries are shared)."""
        return (
            f"{self.op}+{'+'.join(self.fused)}|{self.cin}x{self.cout}|k{self.kernel_size}s{self.stride}"
            f"g{'dw' if self.op_class == 'dwconv' else self.groups}|{self.in_hw[0]}x{self.in_hw[1]}"
            f">{self.out_hw[0]}x{self.out_hw[1]}"
        )

    def with_channels(self, cin: int, cout: int, weight_density: float = 1.0, nm_pattern: str = "") -> KernelFeatures:
        """Return these features for another channel count (depthwise keeps ``groups == cin``)."""
        groups = cin if self.op_class == "dwconv" else self.groups
        macs, nbytes = kernel_cost(
            self.op, self.fused, cin, cout, self.kernel_size, groups, self.in_hw, self.out_hw,
            self.bytes_per_element,
        )
        return replace(
            self, cin=cin, cout=cout, groups=groups, macs=macs, bytes_moved=nbytes,
            cin_mod8=cin % 8, cout_mod8=cout % 8, weight_density=weight_density, nm_pattern=nm_pattern,
        )


def kernel_cost(
    op: str,
    fused: tuple[str, ...],
    cin: int,
    cout: int,
    kernel_size: int,
    groups: int,
    in_hw: tuple[int, int],
    out_hw: tuple[int, int],
    bytes_per_element: int,
) -> tuple[int, int]:
    """Return ``(macs, bytes_moved)`` of one kernel at batch 1."""
    hin, win = in_hw
    hout, wout = out_hw
    out_elems = cout * hout * wout
    in_elems = cin * hin * win
    if op == "conv":
        weights = cout * (cin // max(groups, 1)) * kernel_size * kernel_size + cout
        macs = out_elems * (cin // max(groups, 1)) * kernel_size * kernel_size
        elems = in_elems + weights + out_elems + (out_elems if "add" in fused else 0)
    elif op == "gemm":
        weights = cin * cout + cout
        macs = cin * cout
        elems = cin + weights + cout
    elif op in ("add", "concat", "elementwise"):
        n_in = 2 if op == "add" else 1
        macs = 0
        elems = (n_in * in_elems if op == "add" else in_elems) + out_elems
    elif op == "reshape":
        macs, elems = 0, 0
    else:  # pools
        macs = out_elems * kernel_size * kernel_size if op != "globalpool" else in_elems
        elems = in_elems + out_elems
    return int(macs), int(elems * bytes_per_element)
