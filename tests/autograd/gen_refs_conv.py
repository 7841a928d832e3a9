#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Reference values for the convolution and pooling tests, from PyTorch 1.13.

PyTorch is used only as an oracle: for seeded inputs this script computes
each op's output and the gradients of sum(y * r) for a fixed random r, in
f64, and writes inputs and results as C arrays to torch_refs_conv.h next to
it.  The shapes and options of each case are repeated in test_ops_conv.c.

    /usr/bin/python3 tests/autograd/gen_refs_conv.py
"""
import os
import shutil
import subprocess

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
torch.manual_seed(20260)
out = []


def emit(name, t):
    vals = ", ".join(repr(float(v)) for v in t.detach().reshape(-1).tolist())
    out.append(f"static const double {name}[] = {{ {vals} }};")


def emit_shape(name, shape):
    vals = ", ".join(str(v) for v in shape)
    out.append(f"static const int64_t {name}[] = {{ {vals} }};")


def leaf(*shape):
    return torch.randn(*shape).requires_grad_()


# name, x shape, w shape, bias?, stride, padding, dilation, groups
CONV = [
    ("CONV_A", (2, 2, 7, 6), (4, 2, 3, 2), True, (2, 1), (1, 0), (1, 2), 1),
    ("CONV_G", (2, 4, 4, 4), (4, 2, 3, 3), False, (1, 1), (1, 1), (1, 1), 2),
    ("CONV_P", (2, 3, 4, 3), (4, 3, 1, 1), True, (1, 1), (0, 0), (1, 1), 1),
    ("CONV_U", (3, 6, 6), (2, 3, 2, 2), True, (2, 2), (1, 1), (1, 1), 1),
    ("CONV_D", (1, 3, 7, 7), (3, 1, 3, 3), True, (1, 2), (2, 2), (2, 2), 3),
]

for name, xs, ws, has_b, s, p, d, g in CONV:
    x, w = leaf(*xs), leaf(*ws)
    b = leaf(ws[0]) if has_b else None
    y = F.conv2d(x, w, b, s, p, d, g)
    r = torch.randn(y.shape)
    gx, gw, *gb = torch.autograd.grad((y * r).sum(), [x, w] + ([b] if has_b else []),
                                      create_graph=True)
    emit_shape(name + "_XS", xs)
    emit_shape(name + "_WS", ws)
    emit(name + "_X", x)
    emit(name + "_W", w)
    if has_b:
        emit(name + "_B", b)
        emit(name + "_GB", gb[0])
    emit(name + "_R", r)
    emit(name + "_Y", y)
    emit(name + "_GX", gx)
    emit(name + "_GW", gw)
    # second order: the gradients of sum(gx * u) + sum(gw * v)
    u, v = torch.randn(gx.shape), torch.randn(gw.shape)
    ggx, ggw = torch.autograd.grad((gx * u).sum() + (gw * v).sum(), [x, w])
    emit(name + "_U", u)
    emit(name + "_V", v)
    emit(name + "_GGX", ggx)
    emit(name + "_GGW", ggw)

# name, op, x shape, kernel, stride, padding (adaptive: output size)
POOL = [
    ("MAXP_A", "max", (2, 2, 6, 7), (3, 2), (2, 2), (1, 1)),
    ("MAXP_K", "max", (1, 2, 6, 7), (2, 3), None, (0, 0)),
    ("MAXP_U", "max", (3, 5, 5), (3, 3), (1, 2), (1, 0)),
    ("AVGP_A", "avg", (2, 2, 6, 7), (3, 3), (2, 1), (1, 1)),
    ("AVGP_U", "avg", (2, 6, 5), (2, 2), None, (1, 0)),
    ("ADAP_A", "adaptive", (1, 3, 7, 9), (3, 4), None, None),
    ("ADAP_B", "adaptive", (1, 2, 5, 7), (3, 2), None, None),
    ("ADAP_U", "adaptive", (2, 4, 4), (4, 3), None, None),
]

for name, op, xs, k, s, p in POOL:
    x = leaf(*xs)
    if op == "max":
        y = F.max_pool2d(x, k, s, p)
    elif op == "avg":
        y = F.avg_pool2d(x, k, s, p)
    else:
        y = F.adaptive_avg_pool2d(x, k)
    r = torch.randn(y.shape)
    (gx,) = torch.autograd.grad((y * r).sum(), x)
    emit_shape(name + "_XS", xs)
    emit(name + "_X", x)
    emit(name + "_R", r)
    emit(name + "_Y", y)
    emit(name + "_GX", gx)

# NaN and ties in max pool windows: NaN wins, the first of equal maxima
# takes the gradient.
nan = float("nan")
x = torch.tensor([[[[1.0, nan, 3.0, 3.0, 0.0],
                    [2.0, 2.0, 5.0, nan, 0.0],
                    [0.0, nan, -1.0, -1.0, 7.0],
                    [nan, 4.0, -1.0, -1.0, 7.0]]]], requires_grad=True)
y = F.max_pool2d(x, (2, 2), (1, 2), (0, 1))
r = torch.arange(1.0, 1.0 + y.numel()).reshape(y.shape)
(gx,) = torch.autograd.grad((y * r).sum(), x)
emit("MAXP_NAN_X", x)
emit("MAXP_NAN_Y", y)
emit("MAXP_NAN_GX", gx)

# The 2x2, stride 2 max pool of image models (a fast path in libag): a
# random case, and NaN and ties in each position of the window.
x = leaf(2, 3, 6, 8)
y = F.max_pool2d(x, 2)
r = torch.randn(y.shape)
(gx,) = torch.autograd.grad((y * r).sum(), x)
emit_shape("MAXP_2_XS", x.shape)
emit("MAXP_2_X", x)
emit("MAXP_2_R", r)
emit("MAXP_2_Y", y)
emit("MAXP_2_GX", gx)
x = leaf(2, 2, 7, 9)  # odd: the last row and column are in no window
y = F.max_pool2d(x, 2)
r = torch.randn(y.shape)
(gx,) = torch.autograd.grad((y * r).sum(), x)
emit_shape("MAXP_2O_XS", x.shape)
emit("MAXP_2O_X", x)
emit("MAXP_2O_R", r)
emit("MAXP_2O_Y", y)
emit("MAXP_2O_GX", gx)
x = torch.tensor([[[[1.0, nan, 3.0, 3.0, 0.0, 2.0, nan, nan],
                    [2.0, 2.0, 5.0, nan, 0.0, 2.0, nan, 1.0],
                    [0.0, nan, -1.0, -1.0, 7.0, 7.0, -2.0, -3.0],
                    [nan, 4.0, -1.0, -1.0, 7.0, 7.0, -3.0, -2.0]]]],
                 requires_grad=True)
y = F.max_pool2d(x, 2)
r = torch.arange(1.0, 1.0 + y.numel()).reshape(y.shape)
(gx,) = torch.autograd.grad((y * r).sum(), x)
emit("MAXP_NAN2_X", x)
emit("MAXP_NAN2_Y", y)
emit("MAXP_NAN2_GX", gx)

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_refs_conv.h")
with open(path, "w") as f:
    f.write("/* SPDX-License-Identifier: MIT */\n")
    f.write(f"/* Generated by gen_refs_conv.py with PyTorch {torch.__version__}; do not edit. */\n")
    f.write("#ifndef AG_TESTS_TORCH_REFS_CONV_H\n#define AG_TESTS_TORCH_REFS_CONV_H\n\n")
    f.write("\n".join(out).replace("nan", "NAN") + "\n\n#endif\n")
if shutil.which("clang-format"):
    subprocess.run(["clang-format", "-i", path], check=True)
