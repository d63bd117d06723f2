"""A traced network as the engine's operations: `lower(model, shape)` -> `Graph`.

The model (masks baked in, BatchNorms folded) is traced with torch.fx and each node becomes one of four
operations the engine runs (`conv`, `pool`, `ewise`, `gap`) or no operation at all: Identity, dropout, flatten of
a 1 x 1 map, `0 + x` and spatial crops are views; `torch.cat` and channel zero-padding are placement (the
inputs are written into channel slices of one buffer). Anything else raises `Unsupported`, and `runtime.compile`
keeps the model on another engine. The plan (`plan.Plan`) fuses the graph (`fusion.py`) before laying it out.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .attention import Attention


class Unsupported(Exception):
    """The network uses something the engine does not run."""


@dataclass(eq=False)
class Value:
    """A (C, N, H, W) tensor. Stored in its own buffer, in channels [slot_c, slot_c + C) of `slot`'s buffer, or
    (a view) inside `view_of` at offsets (dc, dy, dx)."""

    C: int
    N: int
    H: int
    W: int
    external: str = ""  # "input": the caller's NCHW tensor
    view_of: Value | None = None
    dc: int = 0
    dy: int = 0
    dx: int = 0
    slot: Value | None = None
    slot_c: int = 0
    zero_channels: bool = False  # some channels are never written (zero padding, x * 0)
    rank2: bool = False  # (N, C) to the caller: the output of flatten or a linear layer
    writers: int = 0  # operations that write it (or its slots)


@dataclass(eq=False)
class Op:
    kind: str  # conv | pool | ewise | gap
    inputs: list[Value]
    out: Value
    name: str = ""
    attrs: dict = field(default_factory=dict)


class Graph:
    def __init__(self, batch: int):
        self.batch, self.ops, self.values = batch, [], []
        self.output: Value | None = None

    def value(self, C, H, W, **kw) -> Value:
        v = Value(C, self.batch, H, W, **kw)
        self.values.append(v)
        return v

    def op(self, kind, inputs, out, name="", **attrs) -> Value:
        self.ops.append(Op(kind, inputs, out, name, attrs))
        out.writers += 1
        return out


def _conv_out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _conv(g: Graph, x: Value, layer: nn.Module, name: str) -> Value:
    if isinstance(layer, nn.Linear):
        if x.H != 1 or x.W != 1:
            raise Unsupported(f"{name}: a linear layer on a {x.H}x{x.W} map")
        weight, k, s, p, d, groups = layer.weight.detach()[:, :, None, None], (1, 1), (1, 1), (0, 0), (1, 1), 1
    else:
        if layer.padding_mode != "zeros" or not isinstance(layer.padding, tuple):
            raise Unsupported(f"{name}: padding {layer.padding!r} / {layer.padding_mode}")
        weight, k, s, p, d, groups = layer.weight.detach(), layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.groups
    if s[0] != s[1] or s[0] not in (1, 2):
        raise Unsupported(f"{name}: stride {s}")
    if weight.shape[1] * groups != x.C:
        raise Unsupported(f"{name}: {x.C} input channels")
    oh, ow = _conv_out(x.H, k[0], s[0], p[0], d[0]), _conv_out(x.W, k[1], s[1], p[1], d[1])
    bias = None if layer.bias is None else layer.bias.detach().float().numpy().copy()
    out = g.value(weight.shape[0], oh, ow, rank2=isinstance(layer, nn.Linear))
    return g.op("conv", [x], out, name, weight=weight.float().numpy().copy(), bias=bias, stride=s[0], pad=p,
                dilation=d, groups=groups, residual=None, act=None)


def _pool(g: Graph, x: Value, k, s, p, mode: int, name: str) -> Value:
    k, s, p = (v if isinstance(v, int) else v[0] for v in (k, s if s is not None else k, p))
    out = g.value(x.C, (x.H + 2 * p - k) // s + 1, (x.W + 2 * p - k) // s + 1)
    return g.op("pool", [x], out, name, k=k, stride=s, pad=p, mode=mode)


def _ewise(g: Graph, inputs: list[Value], name: str, stride: int = 1, **attrs) -> Value:
    a = inputs[0]
    if any((b.C, b.H, b.W) != (a.C, a.H, a.W) for b in inputs[1:]):
        raise Unsupported(f"{name}: operands of different shapes")
    out = g.value(a.C, (a.H - 1) // stride + 1, (a.W - 1) // stride + 1)
    attrs.setdefault("act", None)
    return g.op("ewise", inputs, out, name, stride=stride, **attrs)


def _gate(g: Graph, a: Value, b: Value, name: str) -> Value:
    """a * b where one is a map and the other the same map or one value per channel (squeeze-excitation's gate)."""
    if (a.H, a.W) == (1, 1) and (b.H, b.W) != (1, 1):
        a, b = b, a
    if a.C != b.C or (b.H, b.W) not in ((1, 1), (a.H, a.W)):
        raise Unsupported(f"{name}: a product of shapes {(a.C, a.H, a.W)} and {(b.C, b.H, b.W)}")
    out = g.value(a.C, a.H, a.W)
    return g.op("ewise", [a, b], out, name, stride=1, act=None, mul=True)


def _place(g: Graph, parts: list[tuple[Value, int]], C: int, name: str) -> Value:
    """A value of C channels holding each part at its channel offset (cat, channel padding): a part that can be
    written there directly is, the others are copied."""
    h, w = parts[0][0].H, parts[0][0].W
    out = g.value(C, h, w, zero_channels=sum(v.C for v, _ in parts) < C)
    for v, offset in parts:
        if (v.H, v.W) != (h, w):
            raise Unsupported(f"{name}: parts of different sizes")
        if v.external or v.view_of is not None or v.slot is not None or v.writers == 0:
            v = _ewise(g, [v], name + ".copy")
        v.slot, v.slot_c = out, offset
    return out


def _flat(g: Graph, x: Value, name: str) -> Value:
    """(N, C, H, W) -> (N, C * H * W): a view of a 1 x 1 map, else a copy that moves each position to a channel."""
    if x.H == 1 and x.W == 1:
        x.rank2 = True
        return x
    out = g.value(x.C * x.H * x.W, 1, 1, rank2=True)
    return g.op("ewise", [x], out, name, stride=1, act=None, flatten=True)


def _getitem(g: Graph, x: Value, index, name: str) -> Value:
    if not isinstance(index, tuple) or len(index) != 4 or index[0] != slice(None) or index[1] != slice(None):
        raise Unsupported(f"{name}: indexing {index!r}")
    (ys, ye, ystep), (xs, xe, xstep) = (index[2].indices(x.H), index[3].indices(x.W))
    if ystep != xstep or ye != x.H or xe != x.W:
        raise Unsupported(f"{name}: indexing {index!r}")
    view = g.value(x.C, x.H - ys, x.W - xs, view_of=x, dy=ys, dx=xs) if ys or xs else x
    return _ewise(g, [view], name, stride=ystep) if ystep > 1 else view


# activations as (conv_tile.h's code, lo, hi): 1 clamps to [lo, hi]
ACT = {nn.ReLU: (1, 0.0, float("inf")), nn.ReLU6: (1, 0.0, 6.0), nn.SiLU: (2, 0.0, 0.0), nn.Sigmoid: (3, 0.0, 0.0)}
FUNCTIONS = {F.relu: nn.ReLU, torch.relu: nn.ReLU, F.relu6: nn.ReLU6, F.silu: nn.SiLU, torch.sigmoid: nn.Sigmoid,
             F.sigmoid: nn.Sigmoid}
METHODS = {"relu": nn.ReLU, "relu_": nn.ReLU, "sigmoid": nn.Sigmoid, "sigmoid_": nn.Sigmoid}


def _module(g: Graph, m: nn.Module, args, name: str) -> Value:
    x = args[0]
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        return _conv(g, x, m, name)
    if type(m) in ACT:
        return _ewise(g, [x], name, act=ACT[type(m)])
    if isinstance(m, (nn.Identity, nn.Dropout)):
        return x
    if isinstance(m, nn.Flatten):
        return _flat(g, x, name)
    if isinstance(m, nn.BatchNorm2d):
        scale = 1 / torch.sqrt(m.running_var + m.eps)
        shift = -m.running_mean * scale
        if m.affine:
            scale, shift = scale * m.weight, shift * m.weight + m.bias
        return _ewise(g, [x], name, scale=scale.detach().float().numpy(), shift=shift.detach().float().numpy())
    if isinstance(m, nn.MaxPool2d) and m.dilation in (1, (1, 1)) and not m.ceil_mode:
        return _pool(g, x, m.kernel_size, m.stride, m.padding, 0, name)
    if isinstance(m, nn.AvgPool2d) and not m.ceil_mode and m.divisor_override is None:
        return _pool(g, x, m.kernel_size, m.stride, m.padding, 2 if m.count_include_pad else 1, name)
    if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
        return g.op("gap", [x], g.value(x.C, 1, 1), name)
    raise Unsupported(f"{name}: {type(m).__name__}")


def _function(g: Graph, fn, args, kwargs, name: str):
    if fn in (operator.add, torch.add) and not kwargs:
        a, b = args
        if isinstance(a, (int, float)) and a == 0:
            return b
        if isinstance(b, (int, float)) and b == 0:
            return a
        if isinstance(a, Value) and isinstance(b, Value):
            return _ewise(g, [a, b], name)
    if fn in FUNCTIONS:
        return _ewise(g, [args[0]], name, act=ACT[FUNCTIONS[fn]])
    if fn in (operator.mul, torch.mul) and not kwargs and all(isinstance(v, Value) for v in args):
        return _gate(g, *args, name)
    if fn is torch.cat:
        parts, dim = args[0], kwargs.get("dim", args[1] if len(args) > 1 else 0)
        if dim != 1:
            raise Unsupported(f"{name}: cat along dim {dim}")
        offsets = np.cumsum([0] + [v.C for v in parts])
        return _place(g, list(zip(parts, offsets[:-1].tolist())), int(offsets[-1]), name)
    if fn is torch.flatten and (args[1:] or [kwargs.get("start_dim")])[0] == 1:
        return _flat(g, args[0], name)
    if fn is F.adaptive_avg_pool2d and args[1] in (1, (1, 1)):
        return g.op("gap", [args[0]], g.value(args[0].C, 1, 1), name)
    if fn is F.dropout:
        return args[0]
    constant = not kwargs.get("value") and kwargs.get("mode", "constant") == "constant"
    if fn in (F.pad, torch._C._nn.pad) and len(args[1]) == 6 and not any(args[1][:4]) and constant:
        lo, hi = args[1][4:]
        return _place(g, [(args[0], lo)], args[0].C + lo + hi, name)
    if fn is operator.getitem:
        return _getitem(g, args[0], args[1], name)
    raise Unsupported(f"{name}: {getattr(fn, '__name__', fn)}")


def _method(g: Graph, method: str, args, kwargs, name: str):
    x = args[0]
    if method == "mul" and args[1] == 0:
        return g.value(x.C, x.H, x.W, zero_channels=True)
    if method in METHODS:
        return _ewise(g, [x], name, act=ACT[METHODS[method]])
    if method == "flatten" and args[1:] == (1,):
        return _flat(g, x, name)
    raise Unsupported(f"{name}: .{method}()")


def _where(node: fx.Node, model: nn.Module) -> str:
    """Where the user wrote a node's operation: the module it ran in and the line of their code."""
    path, cls = list(node.meta["nn_module_stack"].values())[-1] if node.meta.get("nn_module_stack") else ("", type(model))
    found = f" in {path or 'the model'} ({getattr(cls, '__name__', cls)})"
    frames = re.findall(r'File "([^"]+)", line (\d+), in \S+\n\s*(.*)', node.meta.get("stack_trace") or "")
    if mine := [f for f in frames if not f[0].startswith(TORCH_DIR)]:
        file, line, code = mine[-1]
        found += f", {Path(file).name}:{line} `{code.strip()}`"
    return found


TORCH_DIR = str(Path(torch.__file__).parent)


class _Tracer(fx.Tracer):
    """Unpacked attention (`attention.Attention`) stays one node: the engine refuses it by name, where tracing into it
    would fail on its Python branches first."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, Attention) or super().is_leaf_module(m, qualname)


def lower(model: nn.Module, shape: tuple[int, ...]) -> Graph:
    """`model` (eval mode, plain layers) traced for inputs of `shape` (N, C, H, W). A refusal names the operation,
    the module it runs in and the user's line of code."""
    try:
        tracer = _Tracer()
        tracer.record_stack_traces = True
        graph = tracer.trace(model)
        traced = fx.GraphModule(tracer.root, graph)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: not for this engine
        raise Unsupported(f"torch.fx cannot trace the model ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if len(shape) != 4:
        raise Unsupported(f"input of shape {tuple(shape)} (the engine runs N x C x H x W images)")
    g = Graph(shape[0])
    env: dict[fx.Node, object] = {}
    modules = dict(traced.named_modules())

    def arg(a):
        return fx.node.map_arg(a, lambda n: env[n])

    for node in traced.graph.nodes:
        try:
            _lower_node(g, node, arg(node.args), arg(node.kwargs), env, modules, shape)
        except Unsupported as exc:
            raise Unsupported(f"{exc}{_where(node, model)}") from None
    return g


def _lower_node(g: Graph, node: fx.Node, args, kwargs, env: dict, modules: dict, shape) -> None:
    """One traced node as the engine's operations (its output in `env`)."""
    if node.op == "placeholder":
        env[node] = _ewise(g, [g.value(shape[1], shape[2], shape[3], external="input")], "input")
    elif node.op == "call_module":
        env[node] = _module(g, modules[node.target], args, node.target)
    elif node.op == "call_function":
        env[node] = _function(g, node.target, args, kwargs, node.name)
    elif node.op == "call_method":
        env[node] = _method(g, node.target, args, kwargs, node.name)
    elif node.op == "output":
        out = args[0]
        if not isinstance(out, Value):
            raise Unsupported("the model returns more than one tensor")
        g.output = out
    else:
        raise Unsupported(f"{node.name}: {node.op}")
