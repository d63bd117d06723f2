"""A sparse convolution on the native kernels: `Pattern`, a mask's kept weights by output channel (and by input
channel, for a 1x1 convolution's input gradient); `_Flat`, their offsets into the input padded once and split into
its stride's phase planes, for one input geometry; `forward`, the convolution itself (`pointwise` for 1x1 ones); and
`linear_rows`, a linear layer on token rows (inference). Training (`train/sparse.py`, which adds both backwards) and
the per-layer inference engine (`runtime/kernels.py`) run them."""

from __future__ import annotations

import ctypes

import torch

from ..native import tile_shape
from .loading import _ptr, library

SLACK = 64  # floats a read may run past a row's end: the widest tile's (conv_tile.h) last columns


class Geometry(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64) for name in ("N", "C", "H", "W", "O", "OH", "OW", "S", "P_H", "P_W", "D_H", "D_W")]

    @classmethod
    def of(cls, x_shape, weight_shape, stride: int, padding: tuple[int, int], dilation: tuple[int, int]) -> Geometry:
        """The geometry of conv2d(x, weight) with these settings."""
        n, c, h, w = x_shape
        kh, kw = weight_shape[2:]
        oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride + 1
        ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride + 1
        return cls(n, c, h, w, weight_shape[0], oh, ow, stride, *padding, *dilation)


class Pattern:
    """A mask's kept weights by output channel (`rows`), with each one's input channel, taps and flat position `at` in
    the dense weight."""

    def __init__(self, mask: torch.Tensor, groups: int, in_channels: int):
        mask = mask.reshape(mask.shape[0], mask.shape[1], *mask.shape[2:], *([1, 1] if mask.dim() == 2 else []))
        outs, per_group = mask.shape[:2]
        o, c, ky, kx = mask.nonzero(as_tuple=True)  # row-major: by output channel, then input channel and taps
        cin = (o // (outs // groups)) * per_group + c
        self.mask = mask.clone()
        self.at = ((o * per_group + c) * mask.shape[2] + ky) * mask.shape[3] + kx
        self.rows = torch.cat([torch.zeros(1, dtype=torch.int64), torch.bincount(o, minlength=outs).cumsum(0)])
        self.cin, self.ky, self.kx = cin.int(), ky.int(), kx.int()
        self.row_of, self.in_channels = o, in_channels
        self.density = float(mask.float().mean())
        self._flats: dict[tuple, _Flat] = {}
        self._by_input: tuple[torch.Tensor, ...] | None = None

    def by_input(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The kept weights by input channel, for a 1x1 convolution's input gradient: (rows, each one's output
        channel, the order that takes the kept weights there)."""
        if self._by_input is None:
            order = torch.argsort(self.cin.long(), stable=True)
            rows = torch.cat([torch.zeros(1, dtype=torch.int64),
                              torch.bincount(self.cin.long(), minlength=self.in_channels).cumsum(0)])
            self._by_input = (rows, self.row_of[order].int().contiguous(), order)
        return self._by_input

    def flat(self, g: Geometry) -> _Flat:
        """Where the kept weights read for this input geometry, made once: a layer sees one shape per batch size."""
        key = tuple(getattr(g, name) for name, _ in Geometry._fields_)
        if key not in self._flats:
            self._flats[key] = _Flat(self, g)
        return self._flats[key]


def _pad(t: torch.Tensor, top: int, left: int, h: int, w: int) -> torch.Tensor:
    """t's planes zero-padded to h x w at (top, left), flat (one parallel pass; F.pad fills, then copies)."""
    n, c, th, tw = t.shape
    t = t.contiguous()
    out = t.new_empty(n * c * h * w)
    library().pad_planes(n * c, th, tw, _ptr(t), top, left, h, w, _ptr(out), torch.get_num_threads())
    return out


def _floor_split(reach: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """reach = s * q + r with 0 <= r < s: the phase r and the phase-plane shift q of an input offset."""
    return torch.remainder(reach, s), torch.div(reach, s, rounding_mode="floor")


def _int32(t: torch.Tensor) -> torch.Tensor:
    if len(t) and (int(t.max()) >= 2**31 or int(t.min()) < -(2**31)):
        raise OverflowError("a layer this large does not fit the sparse kernels' 32-bit offsets")
    return t.to(torch.int32)


class _Flat:
    """Where each kept weight reads, on the input split into its stride's s x s phase planes (x[:, :, a::s, b::s]),
    each zero-padded so that every read of every output position lands inside it: a strided convolution is then a
    stride-1 one over phase-stacked channels, and each kept weight a fixed offset `off` into one flat buffer."""

    def __init__(self, p: Pattern, g: Geometry):
        s = g.S
        ry, qy = _floor_split(p.ky.long() * g.D_H - g.P_H, s)
        rx, qx = _floor_split(p.kx.long() * g.D_W - g.P_W, s)
        lo_y, hi_y = (int(qy.min()), int(qy.max())) if len(qy) else (0, 0)
        lo_x, hi_x = (int(qx.min()), int(qx.max())) if len(qx) else (0, 0)
        self.s, self.hs, self.ws = s, -(-g.H // s), -(-g.W // s)
        self.top, self.left = max(0, -lo_y), max(0, -lo_x)
        self.w = self.left + max(self.ws, g.OW + max(hi_x, 0))
        # and rows of zeros below each plane, which reads past a row's end (a tile's last columns, at most SLACK
        # floats) may reach: no read leaves the buffer
        self.h = self.top + max(self.hs, g.OH + max(hi_y, 0)) + -(-SLACK // self.w) + 1
        self.key = (ry * s + rx) * g.C + p.cin.long()  # the phase-stacked input channel each weight reads
        self.off = (self.key * self.h + qy + self.top) * self.w + qx + self.left
        self.off32 = _int32(self.off)  # the tiles' offsets
        self.tile = tile_shape(g.OH, g.OW)
        # the input gradient: each phase plane of dx correlates dy (padded) with the taps of that phase
        self.dtop, self.dleft = max(0, hi_y), max(0, hi_x)
        self.dw = self.dleft + max(g.OW, self.ws - min(lo_x, 0))
        self.dh = self.dtop + max(g.OH, self.hs - min(lo_y, 0)) + -(-SLACK // self.dw) + 1
        self.order = torch.argsort(self.key, stable=True)
        self.cols = torch.cat([torch.zeros(1, dtype=torch.int64), torch.bincount(self.key, minlength=s * s * g.C).cumsum(0)])
        self.off_t = _int32((p.row_of * self.dh + self.dtop - qy) * self.dw + self.dleft - qx)[self.order].contiguous()
        self.tile_t = tile_shape(self.hs, self.ws)

    def phases(self, x: torch.Tensor) -> torch.Tensor:
        """x as the flat buffer of its zero-padded phase planes."""
        n, c, h, w = x.shape
        s = self.s
        if s == 1:  # one plane: a padding copy
            return _pad(x, self.top, self.left, self.h, self.w)
        buf = x.new_zeros(n, s * s, c, self.h, self.w)
        for a in range(s):
            for b in range(s):
                part = x[:, :, a::s, b::s]
                buf[:, a * s + b, :, self.top:self.top + part.shape[2], self.left:self.left + part.shape[3]] = part
        return buf.reshape(-1)

    def padded(self, grad: torch.Tensor) -> torch.Tensor:
        """dy zero-padded for the input gradient, flat."""
        return _pad(grad, self.dtop, self.dleft, self.dh, self.dw)

    def unphase(self, planes: torch.Tensor, n: int, c: int, h: int, w: int) -> torch.Tensor:
        """The input gradient from its phase planes (n, s * s * c, hs, ws): itself where the stride is 1."""
        s = self.s
        if s == 1:
            return planes
        planes = planes.view(n, s * s, c, self.hs, self.ws)
        out = planes.new_empty(n, c, h, w)
        for a in range(s):
            for b in range(s):
                rows, cols = len(range(a, h, s)), len(range(b, w, s))
                out[:, :, a::s, b::s] = planes[:, a * s + b, :, :rows, :cols]
        return out


def _pointwise(g: Geometry) -> bool:
    """A 1x1 stride-1 unpadded convolution: tiles of positions over all output channels (`pointwise`), no padding."""
    return g.S == 1 and g.OH == g.H and g.OW == g.W and g.P_H == g.P_W == 0


def pointwise(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None,
              outs: int, threads: int) -> torch.Tensor:
    """out[n, o] = bias[o] + sum over the kept k of row o: values[k] * x[n, cols[k]] on (N, C, H, W) planes: a 1x1
    convolution (or its input gradient). Planes whose size is not a multiple of 16 floats are copied into ones that
    are, so a tile's last vector stays inside its plane (7x7 and 14x14 maps: vectors instead of a scalar loop)."""
    n, c, h, w = x.shape
    p = h * w
    ps = -(-p // 16) * 16
    x = x.detach().contiguous()
    if ps != p:
        x = torch.nn.functional.pad(x.view(n, c, p), (0, ps - p))
    out = x.new_empty(n, outs, ps)
    library().pointwise(n, outs, c, p, ps, _ptr(x), _ptr(rows), _ptr(cols), _ptr(values), _ptr(bias), _ptr(out), threads)
    return out.view(n, outs, h, w) if ps == p else out[:, :, :p].reshape(n, outs, h, w)


def forward(x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None, pattern: Pattern, g: Geometry,
            threads: int) -> torch.Tensor:
    """conv2d(x, weight, bias) from the kept weights' `values` (in `pattern`'s order): the pointwise kernel for a 1x1
    unpadded convolution (a strided one on the input's every s-th row and column), else the tile over x's padded
    phase planes. x is float32 NCHW."""
    if pattern.mask.shape[2:] == (1, 1) and g.P_H == g.P_W == 0:
        if g.S > 1:
            x = x[:, :, ::g.S, ::g.S]
        return pointwise(x, pattern.rows, pattern.cin, values, bias, g.O, threads)
    lib, x = library(), x.detach().contiguous()
    out = x.new_empty(g.N, g.O, g.OH, g.OW)
    flat = pattern.flat(g)
    src = flat.phases(x)
    lib.tile_correlate(g.N, g.O, g.OH, g.OW, g.S * g.S * g.C * flat.h * flat.w, flat.w, _ptr(src), _ptr(pattern.rows),
                       _ptr(flat.off32), _ptr(values), _ptr(bias), _ptr(out), *flat.tile, threads)
    return out


def linear_rows(x: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None, pattern: Pattern,
                threads: int) -> torch.Tensor:
    """linear(x, weight, bias) for x of (T, C) row-major float32 (inference: no gradient), from the kept weights'
    `values` in `pattern`'s order; (T, O) row-major out."""
    x = x.detach().contiguous()
    (t, c), o = x.shape, len(pattern.rows) - 1
    xt = x.new_empty(c * t + SLACK)  # x transposed, and the floats a tile's last columns read past its end
    xt[c * t:] = 0
    out = x.new_empty(t, o)
    library().linear_rows(t, o, c, _ptr(x), _ptr(pattern.rows), _ptr(pattern.cin), _ptr(values), _ptr(bias), _ptr(xt),
                          _ptr(out), threads)
    return out
