"""Where the search's tensors live: ``--device`` resolved, and the one place models move between devices.

This is about the *user's* compute (the machine that trains, scores, fine-tunes and evaluates
candidates), not the *target* whose latency the cost model predicts (``--target``).

* :func:`resolve_device` turns ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` into a
  ``torch.device`` (``auto``: CUDA, then MPS, then the CPU); a device this machine does not
  have is a :class:`~autoprune.errors.ConfigError` naming what it has.
* :class:`Compute` is a device and a precision. Its methods are the only code in autoprune that
  moves modules and tensors: :meth:`Compute.place` and :meth:`Compute.to_cpu` for models,
  :meth:`Compute.batch` for data, :meth:`Compute.copy` for a scratch copy on the device, and
  :meth:`Compute.cpu_tensors` for statistics that come back. On the CPU every one of them is a
  no-op, so a CPU run is bit-identical to one that never heard of devices.

Pruning surgery (Torch-Pruning), the cost model and the ONNX export work on CPU models;
:class:`~autoprune.pipeline.Pipeline` places a candidate on the device to fine-tune and
evaluate it and brings it back before surgery's results are costed and exported.

Mixed precision (``torch.autocast``, bf16 where the GPU has it, else fp16 with a gradient
scaler) is on by default on CUDA and off elsewhere; it covers the training forward passes.
Gradient-based criteria and evaluation run in fp32, so scores and accuracies do not depend on it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from autoprune.errors import ConfigError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> tuple[str, ...]:
    """The devices this machine has, e.g. ``("cpu", "cuda:0")``."""
    return ("cpu", *(f"cuda:{i}" for i in range(_cuda_count())), *(("mps",) if _mps_available() else ()))


def _this_machine() -> str:
    return f"this machine has: {', '.join(available_devices())}"


def resolve_device(text: str | None = "auto") -> torch.device:
    """The ``torch.device`` that ``--device text`` means on this machine.

    Args:
        text: ``auto`` (or None), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Raises:
        ConfigError: An unknown name, or a device this machine does not have (the message
            lists the ones it has).
    """
    raw = "auto" if text is None else str(text).strip()
    name = raw.lower()
    if name == "auto":
        if _cuda_count():
            return torch.device("cuda", 0)
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise ConfigError(f"--device mps: Apple's MPS (Metal) GPU is not available here; {_this_machine()}")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        index_text = name.partition(":")[2] or "0"
        if not index_text.isdigit():
            raise ConfigError(f"--device {raw!r}: a CUDA device is cuda or cuda:N with N a GPU number; "
                              f"{_this_machine()}")
        count, index = _cuda_count(), int(index_text)
        if count == 0:
            why = "this PyTorch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(f"--device {raw}: {why}; {_this_machine()} (use --device cpu or auto)")
        if index >= count:
            raise ConfigError(f"--device {raw}: this machine has {count} CUDA GPU{'s' if count > 1 else ''} "
                              f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
        return torch.device("cuda", index)
    raise ConfigError(f"unknown --device {raw!r}; valid: {DEVICE_CHOICES} ({_this_machine()})")


@dataclass(frozen=True)
class Compute:
    """A device and a precision for training, gradient criteria, fine-tuning and evaluation.

    Attributes:
        device: Where tensors live while they are worked on.
        amp: Mixed precision (``torch.autocast``) in the training forward passes; CUDA only.
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: bool = False

    @classmethod
    def resolve(cls, text: str | None = "auto", amp: bool = True) -> Compute:
        """``--device text`` on this machine, with mixed precision where it is CUDA and ``amp`` is true.

        Raises:
            ConfigError: See :func:`resolve_device`.
        """
        device = resolve_device(text)
        return cls(device, amp=bool(amp) and device.type == "cuda")

    # -- what it is ------------------------------------------------------------------------------
    @property
    def moves(self) -> bool:
        """Whether work here means moving tensors off the CPU."""
        return self.device.type != "cpu"

    @property
    def pin_memory(self) -> bool:
        """Whether data loaders should pin host memory (faster, asynchronous copies to a CUDA GPU)."""
        return self.device.type == "cuda"

    @property
    def amp_dtype(self) -> torch.dtype:
        """The autocast dtype: bf16 where the GPU supports it, else fp16."""
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    def describe(self) -> str:
        """One phrase for logs and records, e.g. ``cuda:0 (NVIDIA H100, bf16 autocast)`` or ``cpu``."""
        parts = []
        if self.device.type == "cuda":
            parts.append(torch.cuda.get_device_name(self.device))
        if self.amp:
            parts.append(f"{str(self.amp_dtype).removeprefix('torch.').replace('bfloat16', 'bf16')} autocast")
        return f"{self.device}" + (f" ({', '.join(parts)})" if parts else "")

    # -- the one place models and tensors move ---------------------------------------------------
    def place(self, module: nn.Module) -> nn.Module:
        """Move ``module`` (in place) to the device and return it."""
        return module.to(self.device) if self.moves else module

    def to_cpu(self, module: nn.Module) -> nn.Module:
        """Move ``module`` (in place) back to the CPU and return it."""
        return module.to("cpu") if self.moves else module

    def tensor(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` on the device (asynchronously from pinned memory)."""
        return t.to(self.device, non_blocking=self.pin_memory) if self.moves else t

    def batch(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(x, y)`` of a loader's batch, on the device."""
        return self.tensor(batch[0]), self.tensor(batch[1])

    def cpu_tensors(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Statistics computed on the device, brought back to the CPU (where surgery reads them)."""
        return {k: v.to("cpu") for k, v in tensors.items()} if self.moves else tensors

    def copy(self, module: nn.Module) -> nn.Module:
        """``module`` itself on the CPU, else a deep copy on the device (the original stays where it is).

        The module must not carry active pruning masks (see ``autoprune.pruning.apply.safe_deepcopy``).
        """
        return self.place(copy.deepcopy(module)) if self.moves else module

    @contextlib.contextmanager
    def working_copy(self, module: nn.Module) -> Iterator[nn.Module]:
        """:meth:`copy` for the duration of a ``with`` block (criteria compute gradients on it)."""
        yield self.copy(module)

    # -- precision -------------------------------------------------------------------------------
    def autocast(self):
        """``torch.autocast`` on the device when :attr:`amp` is on; a no-op context otherwise."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled only for fp16 autocast (bf16 and fp32 need none; disabled it is a no-op)."""
        enabled = self.amp and self.amp_dtype == torch.float16
        return torch.amp.GradScaler(self.device.type if enabled else "cpu", enabled=enabled)


__all__ = ["DEVICE_CHOICES", "Compute", "available_devices", "resolve_device"]
