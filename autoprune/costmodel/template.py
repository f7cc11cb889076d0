"""Per-model kernel templates: describe a pruned candidate without exporting it.

A :class:`ModelTemplate` is built once from the dense model: its exported ONNX
kernels, their spatial sizes, and which torch module decides each kernel's input
and output channels. ``template.describe(pruned_module)`` then reads the kept
channel counts and weight sparsity straight from the (physically smaller) module,
which takes well under a millisecond for the zoo models.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoprune.errors import ConfigError

from .features import OP_CLASSES, KernelFeatures
from .kernels import Kernel, detect_kernels, nm_pattern_of

__all__ = ["CandidateShape", "KernelArrays", "ModelTemplate", "export_onnx_bytes"]

_OPS = ("conv", "gemm", "add", "maxpool", "avgpool", "globalpool", "concat", "reshape", "elementwise")


@dataclass(frozen=True)
class CandidateShape:
    """Kept channels and weight sparsity of every kernel of one candidate.

    Attributes:
        cin: Input channels per kernel (template order).
        cout: Output channels per kernel.
        weight_density: Non-zero weight fraction per kernel (1.0 dense or weightless).
        nm_pattern: ``"2:4"`` for kernels whose weights follow N:M, else ``""``.
    """

    cin: tuple[int, ...]
    cout: tuple[int, ...]
    weight_density: tuple[float, ...]
    nm_pattern: tuple[str, ...]


class KernelArrays:
    """Static per-kernel arrays of a kernel list, for vectorised cost evaluation.

    Args:
        features: The kernels' features (any channel counts).
        bytes_per_element: Element size for byte counts.
    """

    def __init__(self, features: Sequence[KernelFeatures], bytes_per_element: int = 4) -> None:
        self.n = len(features)
        self.op = np.array([_OPS.index(f.op) for f in features], dtype=np.int64)
        self.cls = np.array([OP_CLASSES.index(f.op_class) for f in features], dtype=np.int64)
        self.k2 = np.array([f.kernel_size**2 for f in features], dtype=np.float64)
        self.dw = np.array([f.op_class == "dwconv" for f in features])
        self.groups = np.array([f.groups for f in features], dtype=np.float64)
        self.hw_in = np.array([f.in_hw[0] * f.in_hw[1] for f in features], dtype=np.float64)
        self.hw_out = np.array([f.out_hw[0] * f.out_hw[1] for f in features], dtype=np.float64)
        self.add = np.array(["add" in f.fused for f in features], dtype=np.float64)
        self.bpe = float(bytes_per_element)
        self.cin = np.array([f.cin for f in features], dtype=np.float64)
        self.cout = np.array([f.cout for f in features], dtype=np.float64)
        self.density = np.array([f.weight_density for f in features], dtype=np.float64)
        self.nm = np.array([bool(f.nm_pattern) for f in features])

    def costs(self, cin: np.ndarray, cout: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(macs, activation_bytes, weight_bytes)`` per kernel for these channels."""
        op = self.op
        conv, gemm = op == 0, op == 1
        cin_pg = np.where(self.dw, 1.0, cin / np.maximum(self.groups, 1.0))
        out_el = cout * self.hw_out
        in_el = cin * self.hw_in
        macs = np.where(conv, out_el * cin_pg * self.k2, 0.0)
        macs = np.where(gemm, cin * cout, macs)
        pools = (op >= 3) & (op <= 5)
        macs = np.where(pools, np.where(op == 5, in_el, out_el * self.k2), macs)
        w_el = np.where(conv, cout * cin_pg * self.k2 + cout, 0.0)
        w_el = np.where(gemm, cin * cout + cout, w_el)
        act = in_el + out_el + np.where(conv, out_el * self.add, 0.0)
        act = np.where(gemm, cin + cout, act)
        act = np.where(op == 2, 2 * in_el + out_el, act)
        act = np.where(op == 7, 0.0, act)
        return macs, act * self.bpe, w_el * self.bpe


def export_onnx_bytes(model: Any, example_input: Any) -> bytes:
    """Export ``model`` (eval mode, batch 1) to ONNX bytes with torch's TorchScript exporter."""
    import torch

    buf = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            torch.onnx.export(model, (example_input,), buf, dynamo=False, opset_version=17,
                              do_constant_folding=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types
        raise ConfigError(f"cannot export the model to ONNX for cost modelling ({exc.__class__.__name__}: "
                          f"{exc}); check that the model is exportable") from None
    finally:
        model.train(was_training)
    return buf.getvalue()


class ModelTemplate:
    """The kernels of one dense model and where each kernel's channels come from.

    Args:
        name: Model name (used in calibration file names).
        input_shape: ``(C, H, W)`` of one input.
        kernels: Dense kernels from :func:`~autoprune.costmodel.kernels.detect_kernels`.
        param_modules: Module name per kernel for conv/gemm kernels (``""`` otherwise).
        sources: For weightless kernels, the indices of kernels whose output channels
            they carry (summed for ``concat``).
    """

    def __init__(self, name: str, input_shape: tuple[int, ...], kernels: Sequence[Kernel],
                 param_modules: Sequence[str], sources: Sequence[tuple[int, ...]]) -> None:
        self.name = name
        self.input_shape = tuple(int(x) for x in input_shape)
        self.kernels = tuple(kernels)
        self.param_modules = tuple(param_modules)
        self.sources = tuple(sources)
        self.features = tuple(k.features for k in kernels)
        self.arrays = KernelArrays(self.features, 4)
        self.keys = tuple(f.config_key for f in self.features)
        self.modules = tuple(k.module for k in kernels)
        # Precomputed for describe(): (kernel index, module name, its path) of conv/linear kernels, and
        # (kernel index, sources, is concat, is gemm) of kernels whose channels follow their inputs.
        self._param_paths = tuple((i, m, tuple(m.split("."))) for i, m in enumerate(self.param_modules) if m)
        self._derived = tuple((i, src, self.features[i].op == "concat", self.features[i].op == "gemm")
                              for i, src in enumerate(self.sources) if not self.param_modules[i] and src)

    @property
    def input_size(self) -> int:
        """Input side in pixels."""
        return self.input_shape[-1]

    @classmethod
    def from_model(cls, model: Any, example_input: Any, name: str = "model") -> ModelTemplate:
        """Build the template of a dense model by exporting it once.

        Raises:
            ConfigError: If the model cannot be exported, or its conv/linear kernels
                cannot be mapped back to its modules.
        """
        from torch import nn

        kernels = detect_kernels(export_onnx_bytes(model, example_input), with_weights=False)
        named = dict(model.named_modules())
        # Execution order of conv/linear modules, used when node names are not informative.
        order: list[str] = []
        hooks = [m.register_forward_hook(lambda mod, i, o, n=n: order.append(n))
                 for n, m in named.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
        import torch

        with torch.no_grad():
            model.eval()(example_input)
        for h in hooks:
            h.remove()
        param_kernels = [i for i, k in enumerate(kernels) if k.features.op in ("conv", "gemm")]
        by_name = all(isinstance(named.get(kernels[i].module), (nn.Conv2d, nn.Linear)) for i in param_kernels)
        param_modules = [""] * len(kernels)
        if by_name:
            for i in param_kernels:
                param_modules[i] = kernels[i].module
        elif len(order) == len(param_kernels):
            for i, n in zip(param_kernels, order):
                param_modules[i] = n
        else:
            raise ConfigError(f"cannot map the {len(param_kernels)} ONNX conv/gemm kernels of {name} to its "
                              f"{len(order)} conv/linear modules; use plain nn.Conv2d/nn.Linear layers")
        kernels = [Kernel(k.name, param_modules[i] or k.module, k.features, k.inputs_from)
                   for i, k in enumerate(kernels)]
        sources = [() if param_modules[i] else k.inputs_from for i, k in enumerate(kernels)]
        shape = tuple(example_input.shape[1:])
        return cls(name, shape, kernels, param_modules, sources)

    def dense_shape(self) -> CandidateShape:
        """The dense model's :class:`CandidateShape`."""
        n = len(self.kernels)
        return CandidateShape(tuple(f.cin for f in self.features), tuple(f.cout for f in self.features),
                              (1.0,) * n, ("",) * n)

    def shape_from_channels(self, channels: dict[str, tuple[int, int]],
                            density: dict[str, float] | None = None,
                            nm: dict[str, str] | None = None) -> CandidateShape:
        """Build a candidate from ``{module: (cin, cout)}`` (missing modules stay dense)."""
        density = density or {}
        nm = nm or {}
        cin = [f.cin for f in self.features]
        cout = [f.cout for f in self.features]
        dens = [1.0] * len(cin)
        pats = [""] * len(cin)
        for i, mod in enumerate(self.param_modules):
            if mod:
                if mod in channels:
                    cin[i], cout[i] = (int(x) for x in channels[mod])
                dens[i] = float(density.get(mod, 1.0))
                pats[i] = nm.get(mod, "")
            else:
                src = self.sources[i]
                if src:
                    c = sum(cout[j] for j in src) if self.features[i].op == "concat" else cout[src[0]]
                    cin[i] = c
                    cout[i] = c if self.features[i].op != "gemm" else cout[i]
        return CandidateShape(tuple(cin), tuple(cout), tuple(dens), tuple(pats))

    def describe(self, module: Any, *, sparsity: bool = True) -> CandidateShape:
        """Describe a pruned copy of the template's model.

        Args:
            module: The pruned ``nn.Module`` (same module names as the dense model).
            sparsity: Also count zero weights and detect 2:4 patterns.

        Raises:
            ConfigError: If a module of the template is missing from ``module``.
        """
        n = len(self.kernels)
        cin = [f.cin for f in self.features]
        cout = [f.cout for f in self.features]
        dens = [1.0] * n
        pats = [""] * n
        for i, mod, parts in self._param_paths:
            m = module
            for part in parts:  # module.get_submodule(mod), ~20x faster (keeps predict under 1 ms)
                children = getattr(m, "_modules", None)
                m = children.get(part) if children is not None else None
                if m is None:
                    raise ConfigError(f"module {mod!r} of the {self.name} template is missing from the candidate; "
                                      "build the template from the same model architecture")
            attrs = m.__dict__
            if "in_channels" in attrs:
                cin[i], cout[i] = int(attrs["in_channels"]), int(attrs["out_channels"])
            else:
                cin[i], cout[i] = int(m.in_features), int(m.out_features)
            if sparsity:
                w = m.weight
                dens[i] = int(w.count_nonzero()) / max(w.numel(), 1)
                if dens[i] <= 0.55:
                    pats[i] = nm_pattern_of(w.detach().cpu().numpy())
        for i, src, concat, gemm in self._derived:
            c = sum(cout[j] for j in src) if concat else cout[src[0]]
            cin[i] = c
            if not gemm:
                cout[i] = c
        return CandidateShape(tuple(cin), tuple(cout), tuple(dens), tuple(pats))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (kernel modules and dense config keys)."""
        return {"name": self.name, "input_shape": list(self.input_shape),
                "kernels": [{"module": m, "key": k} for m, k in zip(self.modules, self.keys)]}
