"""The engines `runtime.compile` chooses between. Each is built as `Engine(net, example, **options)` from the
prepared network (`common.prepare`), is a callable from an input tensor to the output, and has `profile(x, repeats)`
(rows of one schema: op, kind, ms, and shape / density where it has weights) and `options()` (what its saved plan
needs to build it again without timing):

    engine        sparsearch's whole-network engine (`plan.py`): the sparse weights' non-zeros only, one native
                  call per batch; needs a C++ compiler (`native.py`) and a network `graph.lower` can trace
    onnxruntime   the dense network (zeros multiplied like any weight) in onnxruntime: the `onnx` extra
    openvino      the same ONNX graph in OpenVINO, where the `openvino` package is installed
    eager         the dense network in PyTorch eager mode (always there)
    layers        the per-layer engine (`layers.py`): PyTorch runs the network, each sparse enough conv / linear
                  layer on the kernel measured fastest for it (a mixed plan: dense layers keep oneDNN / MKL)

A builder raises `Unavailable` (with the reason) where its engine cannot run here.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .common import median_seconds
from .graph import Unsupported, lower
from .layers import Layers
from .native import library
from .plan import Plan


class Unavailable(Exception):
    """This engine cannot run the network here; the message says why."""


class Engine:
    """What the dense engines share: no per-operation table, nothing to save."""

    def profile(self, x: torch.Tensor, repeats: int) -> list[dict]:
        return []

    def options(self) -> dict:
        return {}


class Native(Engine):
    """Runs a batch in chunks of `chunk` images, one plan per chunk shape: at batch 32 a deep network's activations
    do not fit in cache, a chunk's do. Without `chunk`, the fastest of a few sizes on `example` (measured). On at most
    `threads` threads: without it, one thread where that measured faster than all of torch's (a small batch's
    operations are too short to share), else all."""

    name = "engine"

    def __init__(self, net: nn.Module, example: torch.Tensor, chunk: int | None = None, threads: int | None = None):
        if library() is None:
            raise Unavailable("the native library could not be built (no C++ compiler?)")
        self.net, self.plans = net, {}
        batch, most = example.shape[0], torch.get_num_threads()
        self.chunk, self.threads = chunk or batch, threads or most
        self.plan(tuple(example.shape))
        if chunk is None and batch > 1:
            self.chunk = min([batch] + [c for c in (16, 8, 4, 2, 1) if c < batch], key=lambda c: self._seconds(example, c))
        if threads is None and most > 1:
            self.threads = min((most, 1), key=lambda t: self._seconds(example, self.chunk, t))

    def _seconds(self, x: torch.Tensor, chunk: int, threads: int | None = None) -> float:
        self.chunk, self.threads = chunk, threads or self.threads
        return median_seconds(self, x, repeats=3)

    def plan(self, shape: tuple[int, ...]) -> Plan:
        """The plan for one input shape, made on first use (shapes are fixed per plan: buffers are preallocated)."""
        if shape not in self.plans:
            try:
                self.plans[shape] = Plan(lower(self.net, shape))
            except Unsupported as exc:
                raise Unavailable(str(exc)) from None
        return self.plans[shape]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        threads, n = min(self.threads, torch.get_num_threads()), self.chunk
        if x.shape[0] <= n:
            return self.plan(tuple(x.shape)).run(x, threads)
        x = x.detach().to(torch.float32).contiguous()
        return torch.cat([self.plan(tuple(part.shape)).run(part, threads) for part in x.split(n)])

    def options(self) -> dict:
        return {"chunk": self.chunk, "threads": self.threads}

    def profile(self, x: torch.Tensor, repeats: int) -> list[dict]:
        """Per-operation wall time (ms per batch, mean of `repeats` runs), with what each operation is."""
        part = x[: self.chunk]
        plan = self.plan(tuple(part.shape))
        seconds = np.zeros(len(plan.records))
        for _ in range(repeats):
            plan.run(part, min(self.threads, torch.get_num_threads()), seconds)
        return plan.table(seconds * (x.shape[0] / part.shape[0]) / repeats)


def _onnx_file(net: nn.Module, example: torch.Tensor, folder: str) -> str:
    """The network as ONNX; a network the exporter cannot take is `Unavailable` with its first line (the exporter
    prints its whole TorchScript graph to the process's stdout and stderr on failure: those are silenced here)."""
    from .export import to_onnx

    with tempfile.TemporaryFile() as sink:
        saved = [os.dup(1), os.dup(2)]
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(sink.fileno(), 1), os.dup2(sink.fileno(), 2)
        try:
            return str(to_onnx(net, example, Path(folder) / "model.onnx"))
        except Exception as exc:  # noqa: BLE001 - any exporter failure: this engine cannot run the network
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise Unavailable(f"the ONNX exporter cannot take this network ({type(exc).__name__}: {first})") from None
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)


class OnnxRuntime(Engine):
    name = "onnxruntime"

    def __init__(self, net: nn.Module, example: torch.Tensor):
        try:
            import onnx  # noqa: F401 - the exporter needs it
            import onnxruntime as ort
        except ImportError:
            raise Unavailable("onnxruntime is not installed (the `onnx` extra)") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        with tempfile.TemporaryDirectory() as folder:
            self.session = ort.InferenceSession(_onnx_file(net, example, folder), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"input": x.detach().float().contiguous().numpy()})[0])


class OpenVino(Engine):
    name = "openvino"

    def __init__(self, net: nn.Module, example: torch.Tensor):
        try:
            import openvino as ov
        except ImportError:
            raise Unavailable("openvino is not installed") from None
        with tempfile.TemporaryDirectory() as folder:
            core = ov.Core()
            # f32: on CPUs with bf16 units OpenVINO would otherwise compute in bf16, another function than ours
            config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY",
                      "INFERENCE_PRECISION_HINT": "f32"}
            self.model = core.compile_model(core.read_model(_onnx_file(net, example, folder)), "CPU", config)
        self.request = self.model.create_infer_request()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        result = self.request.infer({0: x.detach().float().contiguous().numpy()})
        return torch.from_numpy(np.array(next(iter(result.values()))))


class Eager(Engine):
    name = "eager"

    def __init__(self, net: nn.Module, example: torch.Tensor):
        self.net = net

    def __call__(self, x: torch.Tensor):
        with torch.inference_mode():
            return self.net(x)  # CompiledModel takes the logits from (logits, aux)


BUILDERS = {"engine": Native, "onnxruntime": OnnxRuntime, "openvino": OpenVino, "eager": Eager, "layers": Layers}
DENSE = ("onnxruntime", "openvino", "eager")  # the dense engines a user would otherwise deploy with
