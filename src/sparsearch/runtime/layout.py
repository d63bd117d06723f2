"""The operation records of a plan: `plan.py` writes them by field name, `engine.cpp` reads them through a header
generated from this one table (`header()`, written beside the source when the library is built), and the built
library reports the table's digest, which `native.library()` checks before running anything."""

from __future__ import annotations

import hashlib

import numpy as np

RECORD = 64  # int64 fields per operation; field 0 is the kind
KINDS = {"conv": 1, "pool": 2, "ewise": 3, "gap": 4}
FIELDS = {  # the fields after the kind, in order; addresses are pointers, strides are in floats
    "conv": ("in", "in_img", "in_row", "out", "out_ch", "out_img", "out_row", "o", "n", "oh", "ow", "s", "indptr", "off",
             "val", "bias", "res", "res_ch", "res_img", "res_row", "relu", "lo", "hi", "tx", "r", "in_relu", "chans",
             # a depthwise convolution's fused producer (engine.cpp's fused_depthwise); x_in is 0 where there is none
             "x_in", "x_in_img", "x_in_row", "x_s", "x_indptr", "x_off", "x_val", "x_bias", "x_relu", "x_lo", "x_hi",
             "x_in_relu", "x_tx", "x_r", "x_h", "x_w", "x_pad",
             # the mean of each output plane, written while it is in cache (fused_depthwise only); sum is 0 where not
             "sum", "sum_ch", "sum_img",
             # a per-image, per-input-channel gate multiplying the input (squeeze-excitation), folded into the weights:
             # gate_val[n * nnz + k] = val[k] * gate[gate_cin[k] * gate_ch + n * gate_img]; gate is 0 where there is none
             "gate", "gate_ch", "gate_img", "gate_cin", "gate_val", "nnz"),
    "pool": ("in", "in_ch", "in_img", "in_row", "out", "out_ch", "out_img", "out_row", "c", "n", "h", "w", "oh", "ow",
             "k", "s", "pad", "mode"),
    "ewise": ("a", "a_ch", "a_img", "a_row", "a_col", "b", "b_ch", "b_img", "b_row", "b_col", "out", "out_ch", "out_img",
              "out_row", "out_col", "c", "n", "h", "w", "scale", "shift", "act", "lo", "hi", "mul"),
    "gap": ("in", "in_ch", "in_img", "in_row", "out", "out_ch", "out_img", "c", "n", "h", "w"),
}
PREFIX = {"conv": "C", "pool": "P", "ewise": "E", "gap": "G"}  # the C++ names: C_IN, P_MODE, E_ACT, ...
INDEX = {kind: {name: i + 1 for i, name in enumerate(names)} for kind, names in FIELDS.items()}
assert all(len(names) < RECORD for names in FIELDS.values())
DIGEST = hashlib.sha256(repr((RECORD, KINDS, FIELDS)).encode()).hexdigest()[:16]


def write(record: np.ndarray, kind: str, **fields: int) -> None:
    """Set a record's kind and the named fields (the others stay as they are: zero in a fresh record)."""
    record[0] = KINDS[kind]
    for name, value in fields.items():
        record[INDEX[kind][name]] = value


def header() -> str:
    lines = ["// Generated from sparsearch/runtime/layout.py; do not edit.", "#pragma once",
             f"enum {{ RECORD = {RECORD} }};",
             "enum { " + ", ".join(f"{k.upper()} = {v}" for k, v in KINDS.items()) + " };",
             f'#define SPARSEARCH_LAYOUT "{DIGEST}"']
    for kind, names in FIELDS.items():
        lines.append("enum { " + ", ".join(f"{PREFIX[kind]}_{n.upper()} = {i + 1}" for i, n in enumerate(names)) + " };")
    return "\n".join(lines) + "\n"
