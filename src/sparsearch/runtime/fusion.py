"""Fusion passes over a lowered `Graph`, in order:

    1. a ReLU (or ReLU6) into the operation that produces its input, and a residual add into the convolution
       that produces one operand: conv -> (+ r) -> ReLU is one convolution with a fused epilogue;
    2. a ReLU that only convolutions read into those convolutions, applied as they load (DARTS' ReLU -> conv);
    3. output channels known to be zero (no weight, no bias) dropped from the convolutions that read them, and
       not computed at all where nothing else reads them;
    4. a depthwise convolution takes in the convolution producing its input (MobileNet's 1x1 expansion): each
       input channel's plane is computed just before it is convolved, and the expanded map never reaches memory;
    5. squeeze-excitation: the global pool of such a depthwise convolution's output is summed as each plane is
       written, and the gate multiplying that output is folded into the weights of the pointwise convolution
       reading the product (per image), so the gated map is never written.
Each pass applies only where the intermediate value has no other reader, so the function is unchanged.
"""

from __future__ import annotations

import numpy as np
import torch.nn as nn

from .graph import ACT, Graph, Op, Value


def fuse(g: Graph) -> None:
    _producer_fusions(g)
    _relu_into_consumers(g)
    _zero_channels(g)
    _into_depthwise(g)
    _squeeze_excitation(g)


def base(v: Value) -> Value:
    """The value whose buffer a view reads."""
    while v.view_of is not None:
        v = v.view_of
    return v


def _uses(g: Graph) -> dict[int, int]:
    """How many times each value is read: by operations (residuals included), by views of it, as the output."""
    uses: dict[int, int] = {}
    for op in g.ops:
        for v in op.inputs + [op.attrs[k] for k in ("residual", "gate") if op.attrs.get(k) is not None]:
            uses[id(v)] = uses.get(id(v), 0) + 1
    for v in g.values:  # a view reads its base
        if v.view_of is not None:
            uses[id(v.view_of)] = uses.get(id(v.view_of), 0) + 1
    uses[id(g.output)] = uses.get(id(g.output), 0) + 1
    return uses


def _producer_fusions(g: Graph) -> None:
    """Fold each ReLU and residual add into the operation that produces its input, where that input has no
    other use: conv -> (+ r) -> ReLU becomes one conv."""
    uses = _uses(g)
    producer = {id(op.out): op for op in g.ops}
    position = {id(op): i for i, op in enumerate(g.ops)}
    keep = []
    for i, op in enumerate(g.ops):
        src = producer.get(id(op.inputs[0]))
        plain = op.kind == "ewise" and op.attrs.get("scale") is None and op.attrs["stride"] == 1 and not op.attrs.get("mul")
        fusible = src is not None and uses[id(op.inputs[0])] == 1 and op.inputs[0].slot is None and src.attrs.get("act") is None
        if plain and fusible and len(op.inputs) == 1 and op.attrs["act"] and src.kind in ("conv", "ewise"):
            src.attrs["act"], src.out = op.attrs["act"], op.out  # ReLU into its producer
            producer[id(op.out)] = src
            continue
        if plain and len(op.inputs) == 2 and op.attrs["act"] is None:
            for a, b in ((op.inputs[0], op.inputs[1]), (op.inputs[1], op.inputs[0])):
                conv = producer.get(id(a))
                ready = producer.get(id(base(b)))
                if (conv is not None and conv.kind == "conv" and uses[id(a)] == 1 and a.slot is None and conv.attrs["act"] is None
                        and conv.attrs["residual"] is None and (b.external or ready is not None and position[id(ready)] < position[id(conv)])):
                    conv.attrs["residual"], conv.out = b, op.out
                    producer[id(op.out)] = conv
                    break
            else:
                keep.append(op)
            continue
        keep.append(op)
    g.ops = keep


def _relu_into_consumers(g: Graph) -> None:
    """A ReLU whose output only convolutions read (DARTS' ReLU -> conv, one ReLU per operation on a shared state)
    is applied by each of those convolutions as it loads its input, instead of being written out."""
    readers: dict[int, list[Op]] = {}
    other = {id(g.output)} | {id(v.view_of) for v in g.values if v.view_of is not None}
    for op in g.ops:
        for k, v in enumerate(op.inputs):
            if op.kind == "conv" and k == 0:
                readers.setdefault(id(v), []).append(op)
            else:
                other.add(id(v))
        if op.attrs.get("residual") is not None:
            other.add(id(op.attrs["residual"]))
    keep = []
    for op in g.ops:
        relu = (op.kind == "ewise" and len(op.inputs) == 1 and op.attrs["act"] == ACT[nn.ReLU] and op.attrs["stride"] == 1
                and op.attrs.get("scale") is None and op.attrs.get("shift") is None)
        whole = op.inputs[0].view_of is None  # a padded convolution cannot read a crop's padding
        if relu and whole and op.out.slot is None and id(op.out) not in other and readers.get(id(op.out)):
            for conv in readers[id(op.out)]:
                conv.inputs[0], conv.attrs["in_relu"] = op.inputs[0], True
            continue
        keep.append(op)
    g.ops = keep


def _zero_channels(g: Graph) -> None:
    """Output channels with no non-zero weight and no bias are zeros (at 95% most depthwise channels are). A
    convolution reading such a channel drops the weights that would multiply it, and where only convolutions
    read the value, those channels are not computed at all (`skip`)."""
    zero: dict[int, np.ndarray] = {}
    for op in g.ops:
        if op.kind != "conv":
            continue
        w, a = op.attrs["weight"], op.attrs
        outs, cg = w.shape[:2]
        if id(op.inputs[0]) in zero:
            cin = (np.arange(outs)[:, None] // (outs // a["groups"])) * cg + np.arange(cg)[None, :]
            w[zero[id(op.inputs[0])][cin]] = 0
        keeps_zero = a["act"] is None or a["act"] == ACT[nn.SiLU] or a["act"][0] == 1 and a["act"][1] <= 0 <= a["act"][2]
        if a["residual"] is None and keeps_zero:
            empty = ~w.reshape(outs, -1).any(1) & (True if a["bias"] is None else a["bias"] == 0)
            if empty.any():
                zero[id(op.out)] = empty
    other = {id(g.output)} | {id(v.view_of) for v in g.values if v.view_of is not None}
    other |= {id(v) for v in g.values if v.slot is not None}
    for op in g.ops:
        other |= {id(v) for v in op.inputs[op.kind == "conv":]}
        if op.attrs.get("residual") is not None:
            other.add(id(op.attrs["residual"]))
    for op in g.ops:
        if op.kind == "conv" and id(op.out) in zero and id(op.out) not in other:
            op.attrs["skip"] = zero[id(op.out)]


def _into_depthwise(g: Graph) -> None:
    """A depthwise convolution (one input channel per output channel) whose input nothing else reads, produced by
    a convolution without a residual, takes that convolution in as `expand` and reads its input instead."""
    uses, producer = _uses(g), {id(op.out): op for op in g.ops}
    gone = set()
    for op in g.ops:
        v = op.inputs[0]
        src = producer.get(id(v))
        depthwise = op.kind == "conv" and op.attrs["weight"].shape[1] == 1 and op.attrs["groups"] == v.C == op.out.C
        if (depthwise and src is not None and src.kind == "conv" and uses[id(v)] == 1 and v.slot is None
                and v.view_of is None and src.attrs["residual"] is None and "expand" not in src.attrs):
            op.attrs["expand"], op.inputs[0] = src, src.inputs[0]
            gone.add(id(src))
            g.values.remove(v)  # lives only in the engine's scratch
    g.ops = [op for op in g.ops if id(op) not in gone]


def _squeeze_excitation(g: Graph) -> None:
    """A global pool of a fused depthwise convolution's output becomes that convolution's `sum`; a per-channel product
    whose only reader is a pointwise convolution becomes that convolution's `gate` (it reads the ungated map)."""
    uses, producer = _uses(g), {id(op.out): op for op in g.ops}
    readers: dict[int, list[Op]] = {}
    for op in g.ops:
        for v in op.inputs:
            readers.setdefault(id(v), []).append(op)
    gone = set()
    for op in g.ops:
        src = producer.get(id(op.inputs[0]))
        if op.kind == "gap" and src is not None and src.attrs.get("expand") is not None and "sum" not in src.attrs:
            src.attrs["sum"] = op.out
            gone.add(id(op))
        if op.kind == "ewise" and op.attrs.get("mul") and (op.inputs[1].H, op.inputs[1].W) == (1, 1) and op.attrs["act"] is None:
            y, users = op.out, readers.get(id(op.out), [])
            conv = users[0] if len(users) == 1 else None
            pointwise = (conv is not None and conv.kind == "conv" and conv.attrs["weight"].shape[2:] == (1, 1)
                         and conv.attrs["groups"] == 1 and conv.attrs["stride"] == 1 and not conv.attrs.get("in_relu"))
            if pointwise and uses[id(y)] == 1 and y.slot is None and op.inputs[0].view_of is None:
                conv.inputs[0], conv.attrs["gate"] = op.inputs[0], op.inputs[1]
                gone.add(id(op))
                g.values.remove(y)
    g.ops = [op for op in g.ops if id(op) not in gone]
