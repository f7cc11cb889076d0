"""Profiling on the device itself.

* :mod:`autoprune.device.server`: ``autoprune device serve``, run on the board: a TVM RPC server
  with autoprune's ONNX Runtime measurement functions registered (and the board's energy sensor
  read around each measurement). TVM measurements use it like any TVM RPC server.
* :mod:`autoprune.device.client`: :class:`~autoprune.device.client.DeviceOnnxRuntime`, the runtime
  ``autoprune profile --runtime onnxruntime --rpc HOST:PORT`` measures through.

The board needs only the TVM runtime (``apache-tvm``), ``onnxruntime`` and ``numpy``: nothing here
imports torch, onnx, scipy or yaml.
"""

__all__: list[str] = []
