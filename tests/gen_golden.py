#!/usr/bin/python3
"""gen_golden.py - PyTorch reference values for tests/test_parity.c.

Usage: /usr/bin/python3 tests/gen_golden.py OUTDIR   (writes OUTDIR/ops.h5)

Every case is one HDF5 group /<case> holding
    <input>        each input as stored: float32 (trainable unless noted) or int32
    out            the op's output, float32
    R              a fixed random float32 tensor of out's shape
    grad/<input>   d(sum(out * R))/d(input) for every trainable float input
and attributes with the op's arguments (eps, scale, axis, perm, ...) plus
"nograd", a comma-separated list of float inputs that are not trainable
(masks, -inf biases). Inputs are drawn as float32 with a seed derived from the
case name; the reference math then runs in float64 on those exact values and
the results are rounded once to float32, so the golden values are the
correctly rounded answers and fw's float32 error is what the test measures.

Semantics follow core/engine/include/fw/ops.h where it differs from PyTorch: a fully
masked softmax row gives zeros (torch: NaN), an out-of-range embedding id gives
a zero row, cross-entropy over zero counted tokens is 0 (torch: NaN), targets
outside [0, V) other than ignore_index are not counted.
"""
import math
import os
import sys
import zlib

import h5py
import numpy as np
import torch

F64 = torch.float64
AXIS_ALL = -2 ** 31          # FW_AXIS_ALL (INT32_MIN)
IGNORE = -100                # FW_IGNORE_INDEX

CASES = []


class Case:
    """Inputs of one case, drawn from a generator seeded by the case name."""

    def __init__(self, name):
        self.name = name
        self.rng = np.random.default_rng(zlib.crc32(name.encode()))
        self.inputs = []        # (name, np array, kind) kind: 'p' train, 'c' const f32, 'i' int
        self.attrs = {}

    def p(self, name, shape, lo=-1.0, hi=1.0, away=0.0):
        """A trainable float32 input, uniform in [lo, hi], |x| >= away."""
        x = self.rng.uniform(lo, hi, size=shape)
        if away > 0:
            x = np.where(np.abs(x) < away, np.sign(x + 1e-30) * away + x, x)
        return self._add(name, x.astype(np.float32), 'p')

    def pn(self, name, shape, std=1.0):
        return self._add(name, (std * self.rng.standard_normal(shape)).astype(np.float32), 'p')

    def c(self, name, arr):
        """A float32 input without gradient (mask, additive -inf bias)."""
        return self._add(name, np.asarray(arr, dtype=np.float32), 'c')

    def i(self, name, arr):
        return self._add(name, np.asarray(arr, dtype=np.int32), 'i')

    def _add(self, name, arr, kind):
        self.inputs.append((name, arr, kind))
        return len(self.inputs) - 1


def case(name, **attrs):
    """Decorator: fn(c) draws the inputs and returns fn(*torch_inputs) -> out."""
    def reg(fn):
        CASES.append((name, fn, attrs))
        return fn
    return reg


def bf16(x):
    """Rounds to bf16 (nearest even) in forward; the gradient passes through
    unchanged, as fw_cast documents (torch's own .to(bfloat16) would round
    the gradient to bf16 as well)."""
    return x + (x.to(torch.bfloat16).to(F64) - x).detach()


# --- references that differ from plain torch calls ---------------------------------

def masked_scores(x, bias=None, causal=False, scale=1.0):
    z = scale * x
    if bias is not None:
        z = z + bias
    if causal:
        tq, tk = z.shape[-2], z.shape[-1]
        i = torch.arange(tq)[:, None]
        j = torch.arange(tk)[None, :]
        z = z.masked_fill(j > i + (tk - tq), -math.inf)
    return z


def softmax_ref(x, bias=None, causal=False, scale=1.0):
    z = masked_scores(x, bias, causal, scale)
    full = torch.isneginf(z).all(-1, keepdim=True)      # fully masked rows
    z = torch.where(full, torch.zeros_like(z), z)
    y = torch.softmax(z, -1)
    return torch.where(full, torch.zeros_like(y), y)


def ce_ref(logits, targets, mask=None, ignore=IGNORE):
    v = logits.shape[-1]
    x = logits.reshape(-1, v)
    t = targets.reshape(-1).long()
    counted = (t != ignore) & (t >= 0) & (t < v)
    if mask is not None:
        counted = counted & (mask.reshape(-1) != 0)
    lse = torch.logsumexp(x, -1)
    picked = x.gather(1, t.clamp(0, v - 1)[:, None])[:, 0]
    per = torch.where(counted, lse - picked, torch.zeros_like(lse))
    n = int(counted.sum())
    return (per.sum() / max(n, 1)).reshape(1)


def embedding_ref(table, ids):
    v = table.shape[0]
    ids = ids.long()
    valid = ((ids >= 0) & (ids < v)).to(F64)
    return table[ids.clamp(0, v - 1)] * valid[..., None]


def layernorm_ref(x, w, b, eps):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], w, b, eps)


def rmsnorm_ref(x, w, eps):
    y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    return y * w if w is not None else y


# --- matmul and linear -----------------------------------------------------------

@case("matmul_plain", trans_a=0, trans_b=0)
def _(c):
    c.p("a", (3, 4)); c.p("b", (4, 5))
    return lambda a, b: a @ b


@case("matmul_ta", trans_a=1, trans_b=0)
def _(c):
    c.p("a", (4, 3)); c.p("b", (4, 5))
    return lambda a, b: a.T @ b


@case("matmul_tb", trans_a=0, trans_b=1)
def _(c):
    c.p("a", (3, 4)); c.p("b", (5, 4))
    return lambda a, b: a @ b.T


@case("matmul_tab", trans_a=1, trans_b=1)
def _(c):
    c.p("a", (4, 3)); c.p("b", (5, 4))
    return lambda a, b: a.T @ b.T


@case("matmul_b3", trans_a=0, trans_b=0)
def _(c):
    c.p("a", (2, 3, 4)); c.p("b", (2, 4, 5))
    return lambda a, b: a @ b


@case("matmul_b3_ta", trans_a=1, trans_b=0)
def _(c):
    c.p("a", (2, 4, 3)); c.p("b", (2, 4, 5))
    return lambda a, b: a.transpose(-1, -2) @ b


@case("matmul_b4_tb", trans_a=0, trans_b=1)
def _(c):
    c.p("a", (2, 2, 3, 4)); c.p("b", (2, 2, 5, 4))
    return lambda a, b: a @ b.transpose(-1, -2)


@case("matmul_b4", trans_a=0, trans_b=0)
def _(c):
    c.p("a", (2, 3, 3, 4)); c.p("b", (2, 3, 4, 2))
    return lambda a, b: a @ b


@case("matmul_bcast", trans_a=0, trans_b=0)
def _(c):
    c.p("a", (2, 3, 4)); c.p("b", (4, 5))
    return lambda a, b: a @ b


@case("matmul_bcast_tb", trans_a=0, trans_b=1)
def _(c):
    c.p("a", (2, 2, 3, 4)); c.p("b", (5, 4))
    return lambda a, b: a @ b.T


@case("matmul_bcast_ta", trans_a=1, trans_b=0)
def _(c):
    c.p("a", (2, 4, 3)); c.p("b", (4, 5))
    return lambda a, b: a.transpose(-1, -2) @ b


@case("matmul_big", trans_a=0, trans_b=0)
def _(c):
    # K = 96 and sizes off the vector widths: oneDNN's blocked kernels
    c.p("a", (17, 96)); c.p("b", (96, 33))
    return lambda a, b: a @ b


@case("matmul_bf16", trans_a=0, trans_b=1)
def _(c):
    # fw: matmul(cast(a, bf16), cast(b, bf16)); operands are rounded to bf16
    c.p("a", (2, 3, 8)); c.p("b", (5, 8))
    return lambda a, b: bf16(a) @ bf16(b).T


@case("linear_bias")
def _(c):
    c.p("x", (2, 3, 4)); c.p("w", (5, 4)); c.p("b", (5,))
    return lambda x, w, b: x @ w.T + b


@case("linear_nobias")
def _(c):
    c.p("x", (3, 4)); c.p("w", (5, 4))
    return lambda x, w: x @ w.T


# --- element-wise binary ----------------------------------------------------------

for _op, _fn in (("add", torch.add), ("sub", torch.sub), ("mul", torch.mul)):
    def _same(c, fn=_fn):
        c.p("a", (3, 4)); c.p("b", (3, 4))
        return fn

    def _row(c, fn=_fn):
        c.p("a", (2, 3, 4)); c.p("b", (4,))
        return fn

    def _gen(c, fn=_fn):
        c.p("a", (2, 1, 4)); c.p("b", (3, 1))
        return fn

    def _left(c, fn=_fn):
        c.p("a", (3, 1)); c.p("b", (2, 3, 4))
        return fn

    def _col(c, fn=_fn):
        c.p("a", (3, 4)); c.p("b", (3, 1))
        return fn

    case(_op + "_same")(_same)
    case(_op + "_row")(_row)
    case(_op + "_gen")(_gen)
    case(_op + "_left")(_left)
    case(_op + "_col")(_col)


@case("scale", s=-1.75)
def _(c):
    c.p("x", (3, 4))
    return lambda x: -1.75 * x


# --- embedding and norms --------------------------------------------------------

@case("embedding")
def _(c):
    c.p("table", (7, 5)); c.i("ids", [[1, 3, 1], [6, 0, 3]])   # repeated ids accumulate
    return embedding_ref


@case("embedding_oob")
def _(c):
    c.p("table", (6, 4)); c.i("ids", [[2, -1, 5, 6], [0, 2, 100, 1]])
    return embedding_ref


@case("layernorm_wb", eps=1e-5)
def _(c):
    c.pn("x", (2, 3, 8)); c.p("w", (8,), 0.5, 1.5); c.p("b", (8,))
    return lambda x, w, b: layernorm_ref(x, w, b, 1e-5)


@case("layernorm_none", eps=1e-5)
def _(c):
    c.pn("x", (4, 8), 2.0)
    return lambda x: layernorm_ref(x, None, None, 1e-5)


@case("layernorm_w", eps=1e-3)
def _(c):
    c.pn("x", (3, 6)); c.p("w", (6,), 0.5, 1.5)
    return lambda x, w: layernorm_ref(x, w, None, 1e-3)


@case("layernorm_b", eps=1e-5)
def _(c):
    c.pn("x", (3, 6)); c.p("b", (6,))
    return lambda x, b: layernorm_ref(x, None, b, 1e-5)


@case("rmsnorm_w", eps=1e-6)
def _(c):
    c.pn("x", (2, 3, 8)); c.p("w", (8,), 0.5, 1.5)
    return lambda x, w: rmsnorm_ref(x, w, 1e-6)


@case("rmsnorm_none", eps=1e-5)
def _(c):
    c.pn("x", (4, 6))
    return lambda x: rmsnorm_ref(x, None, 1e-5)


# --- activations ------------------------------------------------------------------

@case("gelu_erf", form=0)
def _(c):
    c.p("x", (3, 7), -4, 4)
    return lambda x: torch.nn.functional.gelu(x)


@case("gelu_tanh", form=1)
def _(c):
    c.p("x", (3, 7), -4, 4)
    return lambda x: torch.nn.functional.gelu(x, approximate="tanh")


@case("relu")
def _(c):
    c.p("x", (3, 7), -2, 2, away=0.01)
    return torch.relu


@case("silu")
def _(c):
    c.p("x", (3, 7), -5, 5)
    return torch.nn.functional.silu


@case("tanh")
def _(c):
    c.p("x", (3, 7), -3, 3)
    return torch.tanh


@case("sigmoid")
def _(c):
    c.p("x", (3, 7), -6, 6)
    return torch.sigmoid


# --- softmax ------------------------------------------------------------------------

@case("softmax_plain", causal=0, scale=1.0)
def _(c):
    c.p("x", (3, 6), -3, 3)
    return lambda x: softmax_ref(x)


@case("softmax_scale", causal=0, scale=0.35)
def _(c):
    c.p("x", (2, 3, 6), -4, 4)
    return lambda x: softmax_ref(x, scale=0.35)


@case("softmax_causal", causal=1, scale=1.0)
def _(c):
    c.p("x", (2, 4, 4), -2, 2)
    return lambda x: softmax_ref(x, causal=True)


@case("softmax_causal_tq_lt_tk", causal=1, scale=0.5)
def _(c):
    c.p("x", (2, 3, 5), -2, 2)
    return lambda x: softmax_ref(x, causal=True, scale=0.5)


@case("softmax_bias", causal=0, scale=0.5)
def _(c):
    c.p("x", (2, 3, 4, 4), -2, 2); c.p("bias", (4, 4))
    return lambda x, bias: softmax_ref(x, bias, scale=0.5)


@case("softmax_bias_causal", causal=1, scale=1.0)
def _(c):
    c.p("x", (2, 3, 5), -2, 2); c.p("bias", (3, 5))
    return lambda x, bias: softmax_ref(x, bias, causal=True)


@case("softmax_padmask", causal=0, scale=0.7)
def _(c):
    # key padding per batch: batch 0 masks its last two keys, batch 1 all keys
    c.p("x", (2, 3, 5), -2, 2)
    m = np.zeros((2, 1, 5), np.float32)
    m[0, 0, 3:] = -np.inf
    m[1, 0, :] = -np.inf
    c.c("mask", m)
    return lambda x, mask: softmax_ref(x, mask, scale=0.7)


@case("softmax_rowmask", causal=1, scale=1.0)
def _(c):
    # (Tq, Tk) mask with row 1 fully masked, combined with causal
    c.p("x", (2, 4, 4), -2, 2)
    m = np.zeros((4, 4), np.float32)
    m[1, :] = -np.inf
    m[3, 0] = -np.inf
    c.c("mask", m)
    return lambda x, mask: softmax_ref(x, mask, causal=True)


@case("softmax_wide", causal=0, scale=1.0)
def _(c):
    c.p("x", (2, 300), -8, 8)
    return lambda x: softmax_ref(x)


# --- cross-entropy -------------------------------------------------------------

@case("ce_plain", ignore_index=IGNORE)
def _(c):
    c.p("logits", (2, 3, 7), -3, 3); c.i("targets", c.rng.integers(0, 7, (2, 3)))
    return lambda x, t: ce_ref(x, t)


@case("ce_ignore", ignore_index=IGNORE)
def _(c):
    c.p("logits", (2, 4, 6), -3, 3)
    c.i("targets", [[1, IGNORE, 5, 0], [IGNORE, 2, 2, IGNORE]])
    return lambda x, t: ce_ref(x, t)


@case("ce_mask", ignore_index=IGNORE)
def _(c):
    c.p("logits", (2, 4, 6), -3, 3)
    c.i("targets", [[1, 4, 5, 0], [3, 2, 2, 1]])
    c.c("mask", [[1, 1, 0, 1], [0, 1, 1, 0]])
    return lambda x, t, m: ce_ref(x, t, m)


@case("ce_mask_ignore_oob", ignore_index=IGNORE)
def _(c):
    # ignore_index, a masked token, and targets outside [0, V): none counted
    c.p("logits", (8, 5), -3, 3)
    c.i("targets", [0, IGNORE, 4, 5, -1, 3, 2, 1])
    c.c("mask", [1, 1, 1, 1, 1, 0, 1, 1])
    return lambda x, t, m: ce_ref(x, t, m)


@case("ce_custom_ignore", ignore_index=2)
def _(c):
    c.p("logits", (5, 4), -3, 3); c.i("targets", [2, 0, 2, 3, 1])
    return lambda x, t: ce_ref(x, t, None, 2)


@case("ce_none_counted", ignore_index=IGNORE)
def _(c):
    c.p("logits", (3, 4)); c.i("targets", [IGNORE, IGNORE, IGNORE])
    return lambda x, t: ce_ref(x, t)


@case("ce_wide", ignore_index=IGNORE)
def _(c):
    c.p("logits", (3, 2500), -6, 6); c.i("targets", [17, 2499, 1300])
    return lambda x, t: ce_ref(x, t)


# --- shape ops -------------------------------------------------------------------

@case("concat_axis0", axis=0)
def _(c):
    c.p("a", (2, 3)); c.p("b", (4, 3))
    return lambda a, b: torch.cat([a, b], 0)


@case("concat_last", axis=2)
def _(c):
    c.p("a", (2, 3, 2)); c.p("b", (2, 3, 4))
    return lambda a, b: torch.cat([a, b], 2)


@case("concat_neg", axis=-2)
def _(c):
    c.p("a", (2, 2, 3)); c.p("b", (2, 1, 3))
    return lambda a, b: torch.cat([a, b], -2)


@case("slice_mid", axis=1, start=2, length=3)
def _(c):
    c.p("x", (4, 6))
    return lambda x: x[:, 2:5]


@case("slice_first", axis=0, start=1, length=3)
def _(c):
    c.p("x", (5, 3, 2))
    return lambda x: x[1:4]


@case("slice_neg_tanh", axis=-1, start=1, length=2)
def _(c):
    # a strided view consumed by an element-wise op
    c.p("x", (2, 3, 4))
    return lambda x: torch.tanh(x[..., 1:3])


@case("reshape", shape=[6, -1])
def _(c):
    c.p("x", (2, 3, 4))
    return lambda x: x.reshape(6, -1)


@case("reshape_node", shape=[3, 8])
def _(c):
    # reshape of an op's output, then a consumer (sigmoid)
    c.p("x", (2, 3, 4))
    return lambda x: torch.sigmoid((2.0 * x).reshape(3, 8))


@case("reshape_of_transpose", shape=[4, 6])
def _(c):
    # reshape needs a contiguous source: fw copies the transposed view first
    c.p("x", (6, 4))
    return lambda x: torch.tanh(x.T.reshape(4, 6))


@case("reshape_of_slice", axis=0, start=1, length=2, shape=[-1])
def _(c):
    # a slice along axis 0 is contiguous: reshape views it directly
    c.p("x", (4, 3, 2))
    return lambda x: torch.sigmoid(x[1:3].reshape(-1))


@case("concat_of_views", axis=0, perm=[1, 0])
def _(c):
    c.p("a", (3, 2)); c.p("b", (4, 3))
    return lambda a, b: torch.cat([a.permute(1, 0), b[1:3]], 0)


@case("permute", perm=[2, 0, 1])
def _(c):
    c.p("x", (2, 3, 4))
    return lambda x: x.permute(2, 0, 1)


@case("permute_consumer", perm=[2, 0, 1])
def _(c):
    c.p("x", (2, 3, 4))
    return lambda x: torch.tanh(x.permute(2, 0, 1))


@case("permute4_cont_reshape", perm=[0, 2, 1, 3], shape=[2, 4, 15])
def _(c):
    # attention head merge: (B, H, T, D) -> (B, T, H, D) -> (B, T, H*D)
    c.p("x", (2, 3, 4, 5))
    return lambda x: x.permute(0, 2, 1, 3).contiguous().reshape(2, 4, 15)


@case("transpose_cont", d0=0, d1=1)
def _(c):
    c.p("x", (3, 5))
    return lambda x: x.T.contiguous()


@case("transpose_matmul", d0=-1, d1=-2)
def _(c):
    # matmul(q, transpose(k)) reads a strided operand
    c.p("q", (2, 3, 4)); c.p("k", (2, 5, 4))
    return lambda q, k: q @ k.transpose(-1, -2)


@case("sum_axis", axis=1, keepdim=0)
def _(c):
    c.p("x", (3, 4, 5))
    return lambda x: x.sum(1)


@case("sum_keep_last", axis=-1, keepdim=1)
def _(c):
    c.p("x", (3, 4, 5))
    return lambda x: x.sum(-1, keepdim=True)


@case("sum_all", axis=AXIS_ALL, keepdim=0)
def _(c):
    c.p("x", (3, 4, 5))
    return lambda x: x.sum().reshape(1)


@case("sum_all_keep", axis=AXIS_ALL, keepdim=1)
def _(c):
    c.p("x", (3, 4))
    return lambda x: x.sum().reshape(1, 1)


@case("sum_all_large", axis=AXIS_ALL, keepdim=0)
def _(c):
    c.p("x", (96, 128))
    return lambda x: x.sum().reshape(1)


@case("mean_axis0", axis=0, keepdim=0)
def _(c):
    c.p("x", (3, 4, 5))
    return lambda x: x.mean(0)


@case("mean_keep", axis=1, keepdim=1)
def _(c):
    c.p("x", (3, 4, 5))
    return lambda x: x.mean(1, keepdim=True)


@case("mean_all", axis=AXIS_ALL, keepdim=0)
def _(c):
    c.p("x", (2, 3, 4))
    return lambda x: x.mean().reshape(1)


@case("mean_large_axis", axis=-1, keepdim=0)
def _(c):
    c.p("x", (4, 3000))
    return lambda x: x.mean(-1)


@case("cast_bf16")
def _(c):
    # fw: cast(cast(x, bf16), f32); forward rounds to bf16, gradient passes
    c.p("x", (3, 7), -3, 3)
    return bf16


# --- half-precision activations (autocast) ----------------------------------------
#
# fw's f32/bf16/f16 ops read half inputs, compute in f32 and round the output
# once. As under torch.autocast, a half output's gradient is half too: the
# gradient arriving at it is rounded (bf16o/f16o), while the casts of the f32
# inputs pass theirs through (bf16/f16: fw's cast keeps an f32 gradient for
# the fp32 main gradients). The references do the math in float64 on the
# rounded inputs and round outputs and their gradients where fw does, so out
# differs from fw by at most one half-precision rounding and the gradients
# only by fw's f32 arithmetic. Ops whose backward reads their own output
# (softmax) read the rounded output, as torch's bf16 kernels do.

class _GradRound(torch.autograd.Function):
    """Identity whose backward rounds the gradient to dtype (what autograd
    does to the gradient of a bf16/f16 tensor)."""

    @staticmethod
    def forward(ctx, x, dtype):
        ctx.dtype = dtype
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g.to(ctx.dtype).to(F64), None


def f16(x):
    """Rounds to f16 in forward, the gradient passing through (see bf16)."""
    return x + (x.to(torch.float16).to(F64) - x).detach()


def bf16o(x):
    """A bf16 op output: the value and its gradient rounded to bf16."""
    return _GradRound.apply(bf16(x), torch.bfloat16)


def f16o(x):
    """An f16 op output: the value and its gradient rounded to f16."""
    return _GradRound.apply(f16(x), torch.float16)


class _RoundedOut(torch.autograd.Function):
    """y = rnd(f(x)) whose backward reads the rounded y: dx = g dfdx(y)."""

    @staticmethod
    def forward(ctx, x, f, dfdx, rnd):
        y = rnd(f(x))
        ctx.save_for_backward(y)
        ctx.dfdx = dfdx
        return y

    @staticmethod
    def backward(ctx, g):
        y, = ctx.saved_tensors
        return g * ctx.dfdx(y), None, None, None


class _RoundedSoftmax(torch.autograd.Function):
    """softmax over the last axis (fully masked rows give zeros), its output
    rounded by rnd; backward reads the rounded output y: y (g - sum(g y))."""

    @staticmethod
    def forward(ctx, z, rnd):
        y = rnd(softmax_ref(z))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        y, = ctx.saved_tensors
        return y * (g - (g * y).sum(-1, keepdim=True)), None


def softmax_half_ref(x, rnd, bias=None, causal=False, scale=1.0):
    dt = torch.bfloat16 if rnd is bf16 else torch.float16
    return _GradRound.apply(_RoundedSoftmax.apply(masked_scores(rnd(x), bias, causal, scale),
                                                  rnd), dt)


def gelu_tanh(x):
    return torch.nn.functional.gelu(x, approximate="tanh")


# 1100 and 700 elements per row: blocks of 512 and a partial one.
@case("gelu_tanh_bf16", form=1)
def _(c):
    # within +-3: further out, f32's 1 + tanh cancels in gelu_tanh's gradient
    c.p("x", (3, 700), -3, 3)
    return lambda x: bf16o(gelu_tanh(bf16(x)))


@case("gelu_erf_f16", form=0)
def _(c):
    c.p("x", (3, 700), -5, 5)
    return lambda x: f16o(torch.nn.functional.gelu(f16(x)))


@case("silu_bf16")
def _(c):
    c.p("x", (2, 600), -6, 6)
    return lambda x: bf16o(torch.nn.functional.silu(bf16(x)))


@case("tanh_f16")
def _(c):
    c.p("x", (2, 600), -3, 3)
    # backward reads the rounded output: 1 - y^2
    return lambda x: _GradRound.apply(_RoundedOut.apply(f16(x), torch.tanh, lambda y: 1 - y * y, f16),
                                     torch.float16)


@case("scale_bf16", s=-0.37)
def _(c):
    c.p("x", (5, 9), -3, 3)
    return lambda x: bf16o(-0.37 * bf16(x))


@case("add_row_bf16")
def _(c):
    # bf16 + bf16 (a broadcast row): a bf16 result
    c.p("a", (4, 600), -3, 3); c.p("b", (600,), -3, 3)
    return lambda a, b: bf16o(bf16(a) + bf16(b))


@case("add_mixed_bf16")
def _(c):
    # f32 + bf16 (the residual stream plus a branch): an f32 result
    c.p("a", (3, 5, 8), -3, 3); c.p("b", (3, 5, 8), -3, 3)
    return lambda a, b: a + bf16(b)


@case("mul_row_bf16")
def _(c):
    # bf16 * bf16 (SwiGLU's gate * up; here a broadcast row): a bf16 result
    c.p("a", (4, 600), -3, 3); c.p("b", (600,), -3, 3)
    return lambda a, b: bf16o(bf16(a) * bf16(b))


@case("mul_mixed_f16")
def _(c):
    c.p("a", (3, 5, 8), -3, 3); c.p("b", (5, 8), -3, 3)
    return lambda a, b: a * f16(b)


@case("sub_col_f16")
def _(c):
    c.p("a", (6, 5), -3, 3); c.p("b", (6, 1), -3, 3)
    return lambda a, b: f16o(f16(a) - f16(b))


@case("softmax_causal_bias_bf16", causal=1, scale=0.8)
def _(c):
    c.p("x", (2, 3, 5), -3, 3); c.p("bias", (3, 5))
    return lambda x, bias: softmax_half_ref(x, bf16, bias, causal=True, scale=0.8)


@case("softmax_rowmask_f16", causal=1, scale=1.0)
def _(c):
    c.p("x", (2, 4, 4), -2, 2)
    m = np.zeros((4, 4), np.float32)
    m[1, :] = -np.inf
    m[3, 0] = -np.inf
    c.c("mask", m)
    return lambda x, mask: softmax_half_ref(x, f16, mask, causal=True)


@case("softmax_wide_bf16", causal=0, scale=1.0)
def _(c):
    c.p("x", (3, 1100), -8, 8)
    return lambda x: softmax_half_ref(x, bf16)


@case("softmax_shared_bf16", causal=0, scale=1.0)
def _(c):
    # h = gelu(x) in bf16 feeds softmax and the add: the add's backward
    # writes h's bf16 gradient first, softmax's adds to it (one rounding)
    c.p("x", (3, 40), -2, 2)

    def f(x):
        h = bf16o(gelu_tanh(bf16(x)))
        return bf16o(softmax_half_ref(h, bf16) + h)
    return f


@case("layernorm_wb_bf16", eps=1e-5)
def _(c):
    # bf16 x, f32 statistics; 36000 elements: rows split across threads
    c.p("x", (60, 600), -2, 2); c.p("w", (600,), 0.5, 1.5); c.p("b", (600,))
    return lambda x, w, b: bf16o(layernorm_ref(bf16(x), w, b, 1e-5))


@case("layernorm_none_f16", eps=1e-5)
def _(c):
    c.p("x", (4, 33), -2, 2)
    return lambda x: f16o(layernorm_ref(f16(x), None, None, 1e-5))


@case("rmsnorm_w_bf16", eps=1e-6)
def _(c):
    c.p("x", (2, 3, 40), -2, 2); c.p("w", (40,), 0.5, 1.5)
    return lambda x, w: bf16o(rmsnorm_ref(bf16(x), w, 1e-6))


@case("ce_wide_bf16", ignore_index=IGNORE)
def _(c):
    # bf16 logits, computed in f32: the loss of the rounded logits
    c.p("logits", (3, 2500), -6, 6); c.i("targets", [17, 2499, 1300])
    return lambda x, t: ce_ref(bf16(x), t)


@case("ce_mask_f16", ignore_index=IGNORE)
def _(c):
    c.p("logits", (2, 4, 600), -3, 3)
    c.i("targets", [[1, 4, 599, 0], [3, 2, 2, 1]])
    c.c("mask", [[1, 1, 0, 1], [0, 1, 1, 0]])
    return lambda x, t, m: ce_ref(f16(x), t, m)


@case("linear_autocast_bf16")
def _(c):
    # torch.autocast's linear: bf16 x, w and b; the product rounded, then
    # the bias added and rounded again (fw: matmul then add, each in bf16)
    c.p("x", (2, 3, 24), -1, 1); c.p("w", (10, 24), -0.5, 0.5); c.p("b", (10,))
    return lambda x, w, b: bf16o(bf16o(bf16(x) @ bf16(w).T) + bf16(b))


@case("mlp_block_autocast_bf16", eps=1e-5)
def _(c):
    # mlp_block under autocast: layer norm and the residual in f32, linears,
    # their bias adds and GELU in bf16 (torch.autocast's placement)
    c.pn("x", (2, 3, 8)); c.p("g", (8,), 0.5, 1.5); c.p("beta", (8,))
    c.p("w1", (16, 8), -0.5, 0.5); c.p("b1", (16,)); c.p("w2", (8, 16), -0.5, 0.5)
    c.p("b2", (8,))

    def lin(h, w, b):
        return bf16o(bf16o(bf16(h) @ bf16(w).T) + bf16(b))

    def f(x, g, beta, w1, b1, w2, b2):
        h = layernorm_ref(x, g, beta, 1e-5)
        h = bf16o(gelu_tanh(lin(h, w1, b1)))
        return lin(h, w2, b2) + x
    return f


@case("attention_autocast_bf16", scale=0.5)
def _(c):
    # scores, probabilities and output in bf16; softmax computed in f32
    c.p("q", (2, 5, 4)); c.p("k", (2, 5, 4)); c.p("v", (2, 5, 4))

    def f(q, k, v):
        s = bf16o(bf16(q) @ bf16(k).transpose(-1, -2))
        p = softmax_half_ref(s, bf16, causal=True, scale=0.5)
        return bf16o(p @ bf16(v))
    return f


# --- small compositions ------------------------------------------------------------

@case("attention", scale=1.0 / math.sqrt(3.0))
def _(c):
    c.p("q", (1, 2, 4, 3)); c.p("k", (1, 2, 4, 3)); c.p("v", (1, 2, 4, 3))

    def f(q, k, v):
        return softmax_ref(q @ k.transpose(-1, -2), causal=True,
                           scale=1.0 / math.sqrt(3.0)) @ v
    return f


@case("mlp_block", eps=1e-5)
def _(c):
    c.pn("x", (2, 3, 8)); c.p("g", (8,), 0.5, 1.5); c.p("beta", (8,))
    c.p("w1", (16, 8), -0.5, 0.5); c.p("b1", (16,)); c.p("w2", (8, 16), -0.5, 0.5)
    c.p("b2", (8,))

    def f(x, g, beta, w1, b1, w2, b2):
        h = layernorm_ref(x, g, beta, 1e-5)
        h = torch.nn.functional.gelu(h @ w1.T + b1, approximate="tanh")
        return h @ w2.T + b2 + x
    return f


def lstm_ref(x, params, layers, bidirectional):
    """torch.nn.LSTM (batch_first) itself, run on the given tensors."""
    m = torch.nn.LSTM(x.shape[2], params["weight_hh_l0"].shape[1], num_layers=layers,
                      bidirectional=bidirectional, batch_first=True).to(F64)
    for k, v in params.items():          # the inputs themselves, so gradients reach them
        m._parameters[k] = v
    m._flat_weights = [m._parameters[n] for n in m._flat_weights_names]
    return m(x)[0]


def lstm_case(c, H, I, layers, dirs, zero_hh=False):
    """Inputs named as torch's parameters for the directions dirs ("" forward,
    "_reverse"); a bidirectional module's other direction gets zeros. fw's
    bias is b_ih + b_hh: with zero_hh only b_ih is an input, b_hh is zero."""
    c.p("x", (2, 5, I), -2, 2)
    bidir = "_reverse" in dirs
    names, zeros = [], {}
    for l in range(layers):
        for sfx in ("", "_reverse")[:2 if bidir else 1]:
            n_in = I if l == 0 else H * (2 if bidir else 1)
            for w, shape in (("weight_ih", (4 * H, n_in)), ("weight_hh", (4 * H, H)),
                             ("bias_ih", (4 * H,)), ("bias_hh", (4 * H,))):
                n = f"{w}_l{l}{sfx}"
                if sfx in dirs and not (zero_hh and w == "bias_hh"):
                    names.append(n)
                    c.p(n, shape)
                else:
                    zeros[n] = torch.zeros(shape, dtype=F64)

    def f(x, *ws):
        return lstm_ref(x, dict(zip(names, ws), **zeros), layers, bidir)
    return f


@case("lstm", reverse=0)
def _(c):
    return lstm_case(c, 3, 4, 1, ("",), zero_hh=True)


@case("lstm_reverse", reverse=1)
def _(c):
    # the reverse direction of a bidirectional layer: torch's second half
    f = lstm_case(c, 3, 4, 1, ("_reverse",), zero_hh=True)
    return lambda *a: f(*a)[..., 3:]


@case("lstm_bidir_2layer", hidden=3)
def _(c):
    # P-tuning's encoder: LSTM(I, H, num_layers=2, bidirectional=True)
    return lstm_case(c, 3, 4, 2, ("", "_reverse"))


def run_case(name, fn, attrs):
    c = Case(name)
    c.attrs.update(attrs)
    f = fn(c)
    ts = []
    for nm, arr, kind in c.inputs:
        if kind == 'i':
            ts.append(torch.from_numpy(arr.astype(np.int64)))
        else:
            t = torch.from_numpy(arr.astype(np.float64))
            if kind == 'p':
                t.requires_grad_(True)
            ts.append(t)
    out = f(*ts)
    assert out.dim() >= 1, name
    r = torch.from_numpy(c.rng.uniform(-1, 1, tuple(out.shape)).astype(np.float32))
    loss = (out * r.to(F64)).sum()
    loss.backward()
    return c, out.detach(), r, ts


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: gen_golden.py OUTDIR")
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, "ops.h5")
    tmp = path + ".tmp"
    torch.manual_seed(0)
    names = set()
    with h5py.File(tmp, "w") as f:
        f.attrs["generator"] = "tests/gen_golden.py, torch " + torch.__version__
        for name, fn, attrs in CASES:
            assert name not in names, name
            names.add(name)
            c, out, r, ts = run_case(name, fn, attrs)
            g = f.create_group(name)
            for k, v in c.attrs.items():
                g.attrs[k] = np.asarray(v, dtype=np.float64 if isinstance(v, float)
                                        else np.int64)
            g.attrs["nograd"] = ",".join(nm for nm, _, kind in c.inputs if kind == 'c')
            gg = g.create_group("grad")
            for (nm, arr, kind), t in zip(c.inputs, ts):
                g.create_dataset(nm, data=arr)
                if kind == 'p':
                    gg.create_dataset(nm, data=t.grad.numpy().astype(np.float32))
            o = out.numpy().astype(np.float32)
            assert np.all(np.isfinite(o)), name
            g.create_dataset("out", data=o)
            g.create_dataset("R", data=r.numpy())
    os.replace(tmp, path)
    print("%s: %d cases, %d bytes" % (path, len(CASES), os.path.getsize(path)))


if __name__ == "__main__":
    main()
