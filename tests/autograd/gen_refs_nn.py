#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Reference values for test_ops_nn.c (linear, losses, batch norm), from
PyTorch 1.13 in float64.

PyTorch is used only as an oracle: this script draws fixed inputs, computes
the ops' values and gradients, and writes inputs and results as C arrays to
torch_refs_nn.h next to it.  Gradients are of sum(y * R) for the given
upstream R (1 for a 0-d y).

    /usr/bin/python3 tests/autograd/gen_refs_nn.py
"""
import os
import shutil
import subprocess

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
torch.manual_seed(20261202)
out = []


def emit(name, t):
    t = torch.as_tensor(t, dtype=torch.float64)
    vals = ", ".join(repr(float(v)) for v in t.detach().reshape(-1).tolist())
    out.append(f"static const double {name}[] = {{ {vals} }};")


def emit_i64(name, t):
    vals = ", ".join(str(int(v)) for v in t.reshape(-1).tolist())
    out.append(f"static const int64_t {name}[] = {{ {vals} }};")


def r(*shape, lo=-1.0, hi=1.0):
    return torch.rand(*shape) * (hi - lo) + lo


def grads(y, up, *xs):
    """Gradients of sum(y * up) with respect to xs."""
    xs = [x for x in xs]
    return torch.autograd.grad((y * up).sum(), xs)


def leaf(t):
    return t.detach().clone().requires_grad_(True)


# ---- linear ----
LX, LW, LB, LR = r(3, 4), r(5, 4), r(5), r(3, 5)
LX3, LR3 = r(2, 3, 4), r(2, 3, 5)
for n, v in [("LX", LX), ("LW", LW), ("LB", LB), ("LR", LR), ("LX3", LX3),
             ("LR3", LR3)]:
    emit("REF_" + n, v)
x, w, b = leaf(LX), leaf(LW), leaf(LB)
y = F.linear(x, w, b)
emit("REF_LIN_Y", y)
for n, g in zip(("DX", "DW", "DB"), grads(y, LR, x, w, b)):
    emit("REF_LIN_" + n, g)
x, w = leaf(LX3), leaf(LW)
y = F.linear(x, w)  # no bias, batched
emit("REF_LIN3_Y", y)
for n, g in zip(("DX", "DW"), grads(y, LR3, x, w)):
    emit("REF_LIN3_" + n, g)

# ---- mse ----
MA, MB, MB4, MR = r(3, 4), r(3, 4), r(4), r(3, 4)
for n, v in [("MA", MA), ("MB", MB), ("MB4", MB4), ("MR", MR)]:
    emit("REF_" + n, v)
for red, up in [("mean", 1.0), ("sum", 1.0), ("none", MR)]:
    a, bb = leaf(MA), leaf(MB)
    y = F.mse_loss(a, bb, reduction=red)
    emit(f"REF_MSE_{red.upper()}_Y", y)
    for n, g in zip(("DA", "DB"), grads(y, up, a, bb)):
        emit(f"REF_MSE_{red.upper()}_{n}", g)
a, bb = leaf(MA), leaf(MB4)
y = F.mse_loss(a, bb.expand(3, 4))  # torch warns on broadcasting
emit("REF_MSE_BC_Y", y)
for n, g in zip(("DA", "DB"), grads(y, 1.0, a, bb)):
    emit("REF_MSE_BC_" + n, g)

# ---- cross-entropy ----
CL = r(4, 5) * 3
CT = torch.tensor([1, 0, 4, 2])
CW = r(5, lo=0.5, hi=1.5)
CR = r(4)
CL3 = r(2, 3, 4) * 2
CT3 = torch.tensor([[0, 2, 1, 1], [2, 0, 0, 1]])
CLB = torch.tensor([[1e4, -1e4, 0.0, 5e3], [-1e4, -1e4, -1e4, -1e4 + 1],
                    [1e4, 1e4 - 1, -1e4, 1e4]])
CTB = torch.tensor([1, 3, 0])
for n, v in [("CL", CL), ("CW", CW), ("CR", CR), ("CL3", CL3), ("CLB", CLB)]:
    emit("REF_" + n, v)
for n, v in [("CT", CT), ("CT3", CT3), ("CTB", CTB)]:
    emit_i64("REF_" + n, v)
cases = [
    ("CE_A", CL, CT, dict(), 1.0),
    ("CE_B", CL, CT, dict(weight=CW, ignore_index=2, label_smoothing=0.1),
     1.0),
    ("CE_C", CL, CT, dict(weight=CW, label_smoothing=0.2, reduction="none"),
     CR),
    ("CE_D", CL, CT, dict(reduction="sum", ignore_index=4), 1.0),
    ("CE_E", CL3, CT3, dict(label_smoothing=0.3), 1.0),
    ("CE_F", CLB, CTB, dict(), 1.0),
]
for name, logits, t, kw, up in cases:
    x = leaf(logits)
    y = F.cross_entropy(x, t, **kw)
    emit(f"REF_{name}_Y", y)
    emit(f"REF_{name}_DX", grads(y, up, x)[0])

# ---- nll ----
NL = torch.log_softmax(r(4, 5) * 2, 1)
emit("REF_NL", NL)
for name, kw, up in [("NLL_A", dict(weight=CW), 1.0),
                     ("NLL_B", dict(weight=CW, reduction="none",
                                    ignore_index=0), CR)]:
    x = leaf(NL)
    y = F.nll_loss(x, CT, **kw)
    emit(f"REF_{name}_Y", y)
    emit(f"REF_{name}_DX", grads(y, up, x)[0])

# ---- bce with logits ----
BX = r(3, 4) * 4
BX[0, 0] = 0.0  # the gradient at exactly 0 is sigmoid(0) - t
BT = torch.rand(3, 4)
BPW = r(4, lo=0.5, hi=2.0)
BW = r(3, 1, lo=0.5, hi=1.5)
BR = r(3, 4)
for n, v in [("BX", BX), ("BT", BT), ("BPW", BPW), ("BW", BW), ("BR", BR)]:
    emit("REF_" + n, v)
for name, kw, up in [("BCE_A", dict(), 1.0),
                     ("BCE_B", dict(weight=BW, pos_weight=BPW,
                                    reduction="sum"), 1.0),
                     ("BCE_C", dict(pos_weight=BPW, reduction="none"), BR)]:
    x, t = leaf(BX), leaf(BT)
    y = F.binary_cross_entropy_with_logits(x, t, **kw)
    emit(f"REF_{name}_Y", y)
    for n, g in zip(("DX", "DT"), grads(y, up, x, t)):
        emit(f"REF_{name}_{n}", g)

# ---- batch norm ----
# [4, 3]: three training steps on inputs BNX * (1 + k / 2), then eval.
BNX = r(4, 3) * 2 + 1
BNW, BNB, BNR = r(3, lo=0.5, hi=1.5), r(3), r(4, 3)
for n, v in [("BNX", BNX), ("BNW", BNW), ("BNB", BNB), ("BNR", BNR)]:
    emit("REF_" + n, v)
rm, rv = torch.zeros(3), torch.ones(3)
for k in range(3):
    x, w, b = leaf(BNX * (1 + k / 2)), leaf(BNW), leaf(BNB)
    y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5)
emit("REF_BN_Y", y)
for n, g in zip(("DX", "DW", "DB"), grads(y, BNR, x, w, b)):
    emit("REF_BN_" + n, g)
emit("REF_BN_RM", rm)
emit("REF_BN_RV", rv)
x, w, b = leaf(BNX), leaf(BNW), leaf(BNB)
y = F.batch_norm(x, rm, rv, w, b, training=False, eps=1e-5)
emit("REF_BN_EVAL_Y", y)
for n, g in zip(("DX", "DW", "DB"), grads(y, BNR, x, w, b)):
    emit("REF_BN_EVAL_" + n, g)
# [2, 3, 5] and [2, 3, 2, 2], one step, no affine for the 4-D one;
# [2, 3, 4, 5] has runs long enough for the span kernels.
for name, shape, affine in [("BN3", (2, 3, 5), True),
                            ("BN4", (2, 3, 2, 2), False),
                            ("BN5", (2, 3, 4, 5), True)]:
    X, R = r(*shape) * 3, r(*shape)
    emit(f"REF_{name}_X", X)
    emit(f"REF_{name}_R", R)
    rm, rv = r(3), r(3, lo=0.5, hi=2.0)
    emit(f"REF_{name}_RM0", rm)
    emit(f"REF_{name}_RV0", rv)
    x = leaf(X)
    ins = [x]
    w = b = None
    if affine:
        w, b = leaf(BNW), leaf(BNB)
        ins += [w, b]
    y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.3, eps=1e-3)
    emit(f"REF_{name}_Y", y)
    for n, g in zip(("DX", "DW", "DB"), grads(y, R, *ins)):
        emit(f"REF_{name}_{n}", g)
    emit(f"REF_{name}_RM", rm)
    emit(f"REF_{name}_RV", rv)

path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                    "torch_refs_nn.h")
with open(path, "w") as f:
    f.write("/* SPDX-License-Identifier: MIT */\n")
    f.write(f"/* Generated by gen_refs_nn.py with PyTorch {torch.__version__};"
            " do not edit. */\n")
    f.write("#ifndef AG_TESTS_TORCH_REFS_NN_H\n#define AG_TESTS_TORCH_REFS_NN_H"
            "\n\n#include <stdint.h>\n\n")
    f.write("\n".join(out) + "\n\n#endif\n")
if shutil.which("clang-format"):
    subprocess.run(["clang-format", "-i", path], check=True)
