"""The whole-network engine: a lowered `Graph` laid out in memory once per input shape and run by one native
call (`native.library()`).

Planning, per input shape:
    1. each value gets its place: a buffer of its own, a channel slice of a concatenation's buffer, or a window
       of another value;
    2. each buffer gets the zero padding its convolutions read (padding lives in the buffer, written once);
    3. buffers of the same geometry share memory when their lifetimes do not overlap, so a deep network's
       activations stay in cache;
    4. each operation becomes a record of pointers, strides and sizes (the layout `engine.cpp` reads); each
       convolution's non-zero weights become per-output-channel lists of (offset into the input, value).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..native import tile_shape
from .fusion import fuse
from .graph import Graph, Op, Unsupported, Value
from .layout import INDEX, RECORD, write
from .native import library

GUARD = 4096  # floats after each buffer: tiles read up to one tile width past a row's end


def _float_bits(x: float) -> int:
    return int(np.array([x], np.float32).view(np.int32)[0])


@dataclass(eq=False)
class Buffer:
    C: int
    N: int
    H: int
    W: int
    pad: int = 0
    zero: bool = False
    first: int = -1
    last: int = -1
    array: np.ndarray | None = None

    @property
    def strides(self) -> tuple[int, int, int]:  # channel, image, row (in floats)
        hp, wp = self.H + 2 * self.pad, self.W + 2 * self.pad
        return self.N * hp * wp, hp * wp, wp

    @property
    def size(self) -> int:
        return self.C * self.strides[0] + GUARD

    def address(self, c: int, n: int, y: int, x: int) -> int:
        ch, img, row = self.strides
        return self.array.ctypes.data + 4 * (c * ch + n * img + (self.pad + y) * row + self.pad + x)


def _locate(v: Value) -> tuple[Value, int, int, int]:
    """The value owning v's buffer, and v's channel and spatial offsets in it."""
    c = y = x = 0
    while True:
        if v.view_of is not None:
            c, y, x, v = c + v.dc, y + v.dy, x + v.dx, v.view_of
        elif v.slot is not None:
            c, v = c + v.slot_c, v.slot
        else:
            return v, c, y, x


def _need(a: dict, x: Value, out: Value) -> int:
    """The zero border a convolution with attributes `a` reads around its input x."""
    (kh, kw), (ph, pw), (dh, dw), s = a["weight"].shape[2:], a["pad"], a["dilation"], a["stride"]
    below = (out.H - 1) * s - ph + (kh - 1) * dh - (x.H - 1)
    right = (out.W - 1) * s - pw + (kw - 1) * dw - (x.W - 1)
    return max(ph, pw, below, right, 0)


def _nonzeros(a: dict, ch: int, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A convolution's non-zero weights as per-output-channel lists (indptr, offsets into its input, values) for an
    input with channel and row strides ch and row."""
    weight, (dh, dw), groups = a["weight"], a["dilation"], a["groups"]
    outs, cg = weight.shape[:2]
    o, c, i, j = np.nonzero(weight)
    cin = (o // (outs // groups)) * cg + c
    offsets = cin * ch + i * dh * row + j * dw
    order = np.lexsort((offsets, o))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(o, minlength=outs))]).astype(np.int32)
    return indptr, offsets[order].astype(np.int32), weight[o, c, i, j][order].astype(np.float32)


class Plan:
    """One input shape's memory and records, from a lowered graph it fuses first (ReLUs and residual adds into the
    operations that produce their inputs: `fusion.fuse`). Not re-entrant: one call at a time."""

    def __init__(self, graph: Graph):
        fuse(graph)
        self.graph, self.keep = graph, []
        self.buffers: dict[int, Buffer] = {}
        for v in graph.values:
            root = _locate(v)[0]
            if not root.external and id(root) not in self.buffers:
                self.buffers[id(root)] = Buffer(root.C, root.N, root.H, root.W, zero=root.zero_channels)
        self._pads()
        self._lifetimes()
        self._allocate()
        self.records = np.zeros((len(graph.ops), RECORD), np.int64)
        for i, op in enumerate(graph.ops):
            getattr(self, "_" + op.kind)(self.records[i], op)
        self.input_record = 0  # lowering makes the first operation the copy of the input
        out = graph.output
        self.out_shape = (out.N, out.C) if out.rank2 else (out.N, out.C, out.H, out.W)
        buf, c, y, x = self.buffer(out)
        ch, img, row = buf.strides
        self.out_view = np.lib.stride_tricks.as_strided(  # (N, C, H, W) view of the output's buffer, copied per call
            buf.array[(buf.address(c, 0, y, x) - buf.array.ctypes.data) // 4:], (out.N, out.C, out.H, out.W),
            (4 * img, 4 * ch, 4 * row, 4))

    def buffer(self, v: Value) -> tuple[Buffer, int, int, int]:
        root, c, y, x = _locate(v)
        return self.buffers[id(root)], c, y, x

    def _pads(self) -> None:
        for op in self.graph.ops:
            if op.kind != "conv":
                continue
            producer = op.attrs.get("expand")
            if producer is not None:  # the depthwise part reads its own scratch; its producer reads the buffer
                op.attrs["scratch_pad"] = _need(op.attrs, op.attrs["expand"].out, op.out)
                op = producer
            v = op.inputs[0]
            buf, _, y0, x0 = self.buffer(v)
            need = _need(op.attrs, v, op.out)
            if need and (y0, x0, v.H, v.W) != (0, 0, buf.H, buf.W):
                raise Unsupported(f"{op.name}: a padded convolution of a cropped map")
            buf.pad = max(buf.pad, need)

    def _lifetimes(self) -> None:
        for i, op in enumerate(self.graph.ops):
            reads = [v for v in op.inputs + [op.attrs.get("residual"), op.attrs.get("gate")]
                     if v is not None and not _locate(v)[0].external]
            for v in reads + [op.out] + ([op.attrs["sum"]] if op.attrs.get("sum") is not None else []):
                buf = self.buffer(v)[0]
                buf.first = i if buf.first < 0 else buf.first
                buf.last = max(buf.last, i)
        self.buffer(self.graph.output)[0].last = len(self.graph.ops)
        for buf in self.buffers.values():
            if buf.first < 0:  # never written nor read by an operation (a zero value): lives throughout
                buf.first, buf.last = 0, len(self.graph.ops)

    def _allocate(self) -> None:
        """Greedy reuse: a buffer takes the memory of one of the same geometry whose last use is over. Buffers with
        channels nothing writes keep their own (zeroed) memory, so zeros and padding stay zeros."""
        free: dict[tuple, list[np.ndarray]] = {}
        by_first = sorted(self.buffers.values(), key=lambda b: b.first)
        by_last = sorted(self.buffers.values(), key=lambda b: b.last)
        j = 0
        for i in range(len(self.graph.ops) + 1):
            for b in (b for b in by_first if b.first == i):
                key = (b.C, b.N, b.H, b.W, b.pad)
                pool = free.get(key) if not b.zero else None
                b.array = pool.pop() if pool else np.zeros(b.size, np.float32)
            while j < len(by_last) and by_last[j].last <= i:
                b = by_last[j]
                if not b.zero:
                    free.setdefault((b.C, b.N, b.H, b.W, b.pad), []).append(b.array)
                j += 1

    def _operand(self, v: Value, stride: int = 1) -> tuple[int, int, int, int, int]:
        """Pointer and (channel, image, row, column) strides of v, sampling every `stride`-th row and column."""
        if v.external:
            return 0, v.H * v.W, v.C * v.H * v.W, v.W * stride, stride
        buf, c, y, x = self.buffer(v)
        ch, img, row = buf.strides
        return buf.address(c, 0, y, x), ch, img, row * stride, stride

    def _conv(self, r: np.ndarray, op: Op) -> None:
        a = op.attrs
        s, (ph, pw) = a["stride"], a["pad"]
        x, out = op.inputs[0], op.out
        buf, c0, y0, x0 = self.buffer(x)
        ob, oc0, oy0, ox0 = self.buffer(out)
        ch, img, row = buf.strides
        N, OH, OW = out.N, out.H, out.W
        ochs, oimg, orow = ob.strides
        producer = a.get("expand")
        flat = (producer is None and (a.get("gate") is None or N == 1) and a["weight"].shape[2:] == (1, 1) and s == 1
                and buf.pad == 0 and ob.pad == 0
                and (y0, x0, x.H, x.W) == (0, 0, buf.H, buf.W) and (oy0, ox0, OH, OW) == (0, 0, ob.H, ob.W))
        if flat:  # a pointwise layer over unpadded maps: all images' positions are one contiguous row
            N, OH, OW = 1, 1, N * OH * OW
        rows, tx = tile_shape(OH, OW)
        if producer is not None:  # the depthwise weights read one channel of the scratch (engine.cpp)
            indptr, off, val = _nonzeros(a, 0, producer.out.W + 2 * a["scratch_pad"])
            self._producer(r, producer, a["scratch_pad"])
        else:
            indptr, off, val = _nonzeros(a, ch, row)
        outs, bias = a["weight"].shape[0], a["bias"]
        self.keep += [indptr, off, val, bias]
        if a.get("skip") is not None:  # output channels known to be zero that no one reads
            chans = np.flatnonzero(~a["skip"]).astype(np.int32)
            self.keep.append(chans)
            outs = len(chans)
        write(r, "conv", **{"in": buf.address(c0, 0, y0 - ph, x0 - pw)}, in_img=img, in_row=row,
              out=ob.address(oc0, 0, oy0, ox0), out_ch=ochs, out_img=oimg, out_row=orow, o=outs, n=N, oh=OH, ow=OW, s=s,
              indptr=indptr.ctypes.data, off=off.ctypes.data, val=val.ctypes.data,
              bias=0 if bias is None else bias.ctypes.data, tx=tx, r=rows, in_relu=int(a.get("in_relu", False)))
        if a["residual"] is not None:
            ptr, rch, rimg, rrow, _ = self._operand(a["residual"])
            write(r, "conv", res=ptr, res_ch=rch, res_img=rimg, res_row=rrow)
        self._act(r, "conv", "relu", a["act"])
        if a.get("skip") is not None:
            write(r, "conv", chans=chans.ctypes.data)
        if a.get("sum") is not None:
            ptr, sch, simg, _, _ = self._operand(a["sum"])
            write(r, "conv", sum=ptr, sum_ch=sch, sum_img=simg)
        if a.get("gate") is not None:  # 1x1 weights: each non-zero's offset is its input channel times ch
            ptr, gch, gimg, _, _ = self._operand(a["gate"])
            cin, gated = (off // ch).astype(np.int32), np.zeros(out.N * len(val), np.float32)
            self.keep += [cin, gated]
            write(r, "conv", gate=ptr, gate_ch=gch, gate_img=gimg, gate_cin=cin.ctypes.data, gate_val=gated.ctypes.data,
                  nnz=len(val))

    def _producer(self, r: np.ndarray, op: Op, pad: int) -> None:
        """The x_ fields of a depthwise convolution's record: the producer `op` it computes channel by channel into
        a scratch plane with a border of `pad`."""
        a, x = op.attrs, op.inputs[0]
        buf, c0, y0, x0 = self.buffer(x)
        ch, img, row = buf.strides
        indptr, off, val = _nonzeros(a, ch, row)
        rows, tx = tile_shape(op.out.H, op.out.W)
        self.keep += [indptr, off, val, a["bias"]]
        write(r, "conv", x_in=buf.address(c0, 0, y0 - a["pad"][0], x0 - a["pad"][1]), x_in_img=img, x_in_row=row,
              x_s=a["stride"], x_indptr=indptr.ctypes.data, x_off=off.ctypes.data, x_val=val.ctypes.data,
              x_bias=0 if a["bias"] is None else a["bias"].ctypes.data, x_in_relu=int(a.get("in_relu", False)),
              x_tx=tx, x_r=rows, x_h=op.out.H, x_w=op.out.W, x_pad=pad)
        self._act(r, "conv", "x_relu", a["act"])

    @staticmethod
    def _act(r: np.ndarray, kind: str, flag: str, act) -> None:
        if act is not None:  # flag "relu", "act" or "x_relu" takes the code (graph.ACT), with the bounds beside it
            lo, hi = ("x_lo", "x_hi") if flag.startswith("x_") else ("lo", "hi")
            write(r, kind, **{flag: act[0], lo: _float_bits(act[1]), hi: _float_bits(act[2])})

    def _pool(self, r: np.ndarray, op: Op) -> None:
        x, out, a = op.inputs[0], op.out, op.attrs
        ptr, ch, img, row, _ = self._operand(x)
        optr, och, oimg, orow, _ = self._operand(out)
        write(r, "pool", **{"in": ptr}, in_ch=ch, in_img=img, in_row=row, out=optr, out_ch=och, out_img=oimg, out_row=orow,
              c=x.C, n=x.N, h=x.H, w=x.W, oh=out.H, ow=out.W, k=a["k"], s=a["stride"], pad=a["pad"], mode=a["mode"])

    def _ewise(self, r: np.ndarray, op: Op) -> None:
        a = op.attrs
        operand = lambda name, v, stride=1: dict(zip((name, f"{name}_ch", f"{name}_img", f"{name}_row", f"{name}_col"),
                                                     self._operand(v, stride)))
        write(r, "ewise", **operand("a", op.inputs[0], a["stride"]), **operand("out", op.out))
        if len(op.inputs) > 1:
            write(r, "ewise", **operand("b", op.inputs[1], a["stride"]), mul=int(a.get("mul", False)))
            if (op.inputs[1].H, op.inputs[1].W) != (op.inputs[0].H, op.inputs[0].W):  # a gate: one value per channel
                write(r, "ewise", b_row=0, b_col=0)
        out = op.out
        write(r, "ewise", c=out.C, n=out.N, h=out.H, w=out.W)
        if a.get("flatten"):  # input position (c, y, x) -> output channel (c * H + y) * W + x
            x = op.inputs[0]
            ch = int(r[INDEX["ewise"]["out_ch"]])
            write(r, "ewise", out_ch=x.H * x.W * ch, out_row=x.W * ch, out_col=ch, c=x.C, n=x.N, h=x.H, w=x.W)
        for name in ("scale", "shift"):
            if a.get(name) is not None:
                arr = np.ascontiguousarray(a[name], np.float32)
                self.keep.append(arr)
                write(r, "ewise", **{name: arr.ctypes.data})
        self._act(r, "ewise", "act", a["act"])

    def _gap(self, r: np.ndarray, op: Op) -> None:
        x, out = op.inputs[0], op.out
        ptr, ch, img, row, _ = self._operand(x)
        optr, och, oimg, _, _ = self._operand(out)
        write(r, "gap", **{"in": ptr}, in_ch=ch, in_img=img, in_row=row, out=optr, out_ch=och, out_img=oimg, c=x.C, n=x.N,
              h=x.H, w=x.W)

    def run(self, x: torch.Tensor, threads: int, seconds: np.ndarray | None = None) -> torch.Tensor:
        lib = library()
        x = x.detach().to(torch.float32).contiguous()
        self.records[self.input_record, INDEX["ewise"]["a"]] = x.data_ptr()
        lib.sparsearch_run(self.records.ctypes.data, len(self.records), threads,
                           None if seconds is None else seconds.ctypes.data)
        # always a copy: where the view happens to be contiguous, ascontiguousarray would hand out the engine's own
        # buffer, which the next call (the next chunk of a batch) overwrites
        return torch.from_numpy(self.out_view.copy()).reshape(self.out_shape)

    def table(self, seconds: np.ndarray) -> list[dict]:
        rows = []
        for op, t in zip(self.graph.ops, seconds):
            row = {"op": op.name, "kind": op.kind, "ms": round(1e3 * float(t), 4),
                   "out": [op.out.C, op.out.H, op.out.W]}
            if op.kind == "conv":
                w = op.attrs["weight"]
                row.update(shape=list(w.shape), density=round(float((w != 0).mean()), 4),
                           fused=[k for k in ("residual", "act") if op.attrs[k] is not None])
                if op.attrs.get("expand") is not None:
                    row["fused"].append("producer " + op.attrs["expand"].name)
                row["fused"] += [k for k in ("sum", "gate") if op.attrs.get(k) is not None]
            rows.append(row)
        return rows


__all__ = ["Plan"]
