#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The docs/benchmarks.md workloads in PyTorch, written to match ag-bench.

Same sizes, same op graph, same timing boundaries and the same JSON as
`ag-bench --json`, so tools/compare/compare.py can pair the figures.  Run by
compare.py in a subprocess per thread count, so that environment switches
(ATEN_CPU_CAPABILITY, OPENBLAS_CORETYPE, OPENBLAS_NUM_THREADS) apply.

Timing boundaries (as in ag-bench):
  chain        forward = building y (3N nodes) and sum; backward = backward()
  elementwise  forward = y = op(x) only; backward = backward() of sum(y)
  wide         forward = all K branches and the loss; backward = backward()
  mlp          one step = forward + backward + SGD update + grad drop
  cnn          the same for the Fashion-MNIST-sized CNN
  limits       one triad pass (torch.add with out=, f64); one torch.mm
"""

import argparse
import json
import math
import os
import platform
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("torch_bench.py: PyTorch is not importable by %s" % sys.executable,
          file=sys.stderr)
    sys.exit(2)

now = time.perf_counter


def uniform(gen, shape, lo, hi, dtype=torch.float32, grad=False):
    t = torch.rand(shape, generator=gen, dtype=dtype) * (hi - lo) + lo
    return t.requires_grad_(grad)


class Results:
    def __init__(self):
        self.series = {}
        self.order = []
        self.recording = False

    def record(self, workload, case, threads, metric, unit, v):
        key = (workload, case, threads, metric)
        if key not in self.series:
            self.series[key] = (unit, [])
            self.order.append(key)
        if self.recording:
            self.series[key][1].append(v)

    def to_json(self):
        out = []
        for key in self.order:
            unit, v = self.series[key]
            if not v:
                continue
            s = sorted(v)
            n = len(s)
            med = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
            out.append({"workload": key[0], "case": key[1],
                        "threads": key[2], "metric": key[3], "unit": unit,
                        "median": med, "min": s[0], "max": s[-1],
                        "reps": n, "samples": v})
        return out


def chain(res, cfg, gen, threads):
    n = cfg["chain_n"]
    nodes = 3 * n + 1
    for s in cfg["chain_s"]:
        x = uniform(gen, (s,), -1, 1, grad=True)
        t0 = now()
        y = x
        for _ in range(n):
            y = y + 0.001 * torch.tanh(y)
        loss = y.sum()
        t1 = now()
        loss.backward()
        t2 = now()
        del y, loss
        x.grad = None
        case = "S=%d" % s
        res.record("chain", case, threads, "fwd_ns_per_node", "ns",
                   (t1 - t0) * 1e9 / nodes)
        res.record("chain", case, threads, "bwd_ns_per_node", "ns",
                   (t2 - t1) * 1e9 / nodes)


# name, function (None: x * w), input range, fwd bytes, bwd bytes / element
EW_OPS = [
    ("exp", torch.exp, -1, 1, 8, 12),
    ("log", torch.log, 0.5, 2, 8, 12),
    ("sin", torch.sin, -1, 1, 8, 12),
    ("tanh", torch.tanh, -1, 1, 8, 12),
    ("sigmoid", torch.sigmoid, -1, 1, 8, 12),
    ("mul", None, -1, 1, 12, 24),
]


def elementwise(res, cfg, state, threads):
    n = cfg["ew_n"]
    for i, (name, fn, lo, hi, fb, bb) in enumerate(EW_OPS):
        x = state["ew_x"][i]
        w = state["ew_w"]
        t0 = now()
        y = fn(x) if fn is not None else x * w
        t1 = now()
        loss = y.sum()
        t2 = now()
        loss.backward()
        t3 = now()
        del y, loss
        x.grad = None
        w.grad = None
        f, b = t1 - t0, t3 - t2
        res.record("elementwise", name, threads, "fwd_ms", "ms", f * 1e3)
        res.record("elementwise", name, threads, "bwd_ms", "ms", b * 1e3)
        res.record("elementwise", name, threads, "fwd_gbps", "GB/s",
                   fb * n / f * 1e-9)
        res.record("elementwise", name, threads, "bwd_gbps", "GB/s",
                   bb * n / b * 1e-9)


def wide(res, cfg, state, threads):
    k, l, n = cfg["wide_k"], cfg["wide_l"], cfg["wide_n"]
    x, ws = state["wide_x"], state["wide_w"]
    t0 = now()
    loss = None
    for j in range(k):
        h = x * ws[j]
        for _ in range(l):
            h = torch.tanh(h)
        h = h.sum()
        loss = h if loss is None else loss + h
    t1 = now()
    loss.backward()
    t2 = now()
    del loss, h
    x.grad = None
    for w in ws:
        w.grad = None
    case = "K=%d,L=%d,n=%d" % (k, l, n)
    res.record("wide", case, threads, "fwd_ms", "ms", (t1 - t0) * 1e3)
    res.record("wide", case, threads, "bwd_ms", "ms", (t2 - t1) * 1e3)


def mlp_loss(p, x, target):
    h = x
    for i in range(3):
        h = F.linear(h, p[2 * i], p[2 * i + 1])
        if i < 2:
            h = torch.relu(h)
    return F.cross_entropy(h, target)


def cnn_loss(p, bn_stats, x, target):
    h = F.max_pool2d(torch.relu(F.conv2d(x, p[0], p[1], padding=1)), 2)
    h = F.conv2d(h, p[2], p[3], padding=1)
    h = F.batch_norm(h, bn_stats[0], bn_stats[1], p[4], p[5], training=True,
                     momentum=0.1, eps=1e-5)
    h = F.max_pool2d(torch.relu(h), 2).reshape(x.shape[0], -1)
    h = torch.relu(F.linear(h, p[6], p[7]))
    return F.cross_entropy(F.linear(h, p[8], p[9]), target)


def sgd(p, lr):
    with torch.no_grad():
        for t in p:
            g = t.grad
            g.mul_(lr)
            t.sub_(g)
            t.grad = None


def mlp(res, cfg, state, threads):
    steps = cfg["mlp_steps"]
    d, b = cfg["mlp_dims"], cfg["mlp_b"]
    case = "%d-%d-%d-%d,B=%d" % (d[0], d[1], d[2], d[3], b)
    # the same graph as ag-bench: F.linear (ag_linear), F.cross_entropy
    # (ag_cross_entropy, mean over the batch)
    p, x, tgt = state["mlp_p"], state["mlp_x"], state["mlp_target"]
    t0 = now()
    for _ in range(steps):
        mlp_loss(p, x, tgt).backward()
        sgd(p, 0.01)
    t = (now() - t0) / steps
    res.record("mlp", case, threads, "steps_per_s", "steps/s", 1 / t)
    res.record("mlp", case, threads, "step_ms", "ms", t * 1e3)


def cnn(res, cfg, state, threads):
    steps = cfg["cnn_steps"]
    b, hw = cfg["cnn_b"], cfg["cnn_hw"]
    case = "fmnist-cnn,B=%d" % b
    if hw != 28:
        case += ",%dx%d" % (hw, hw)
    p, stats = state["cnn_p"], state["cnn_bn"]
    x, tgt = state["cnn_x"], state["cnn_target"]
    t0 = now()
    for _ in range(steps):
        cnn_loss(p, stats, x, tgt).backward()
        sgd(p, 0.01)
    t = (now() - t0) / steps
    res.record("cnn", case, threads, "steps_per_s", "steps/s", 1 / t)
    res.record("cnn", case, threads, "step_ms", "ms", t * 1e3)


def triad(res, cfg, state, threads):
    a, b, c = state["triad"]
    t0 = now()
    torch.add(b, c, alpha=3.0, out=a)
    t = now() - t0
    nbytes = 3 * a.numel() * a.element_size()
    res.record("limits", "3x%dMiB" % (cfg["triad_bytes"] >> 20), threads,
               "triad_gbps", "GB/s", nbytes / t * 1e-9)


def gemm(res, cfg, state, threads):
    a, b = state["gemm"]
    n = cfg["gemm_n"]
    with torch.no_grad():
        t0 = now()
        torch.mm(a, b)
        t = now() - t0
    res.record("limits", "%d^3" % n, threads, "gemm_gflops", "GFLOP/s",
               2.0 * n * n * n / t * 1e-9)


def config(quick):
    if quick:
        return dict(chain_n=1000, chain_s=[1, 16], ew_n=4096, wide_k=16,
                    wide_l=32, wide_n=256, mlp_dims=[32, 64, 64, 10],
                    mlp_b=16, mlp_steps=2, cnn_b=4, cnn_hw=8, cnn_steps=1,
                    triad_bytes=1 << 20, gemm_n=96)
    return dict(chain_n=10000, chain_s=[1, 1024], ew_n=1 << 22, wide_k=16,
                wide_l=32, wide_n=65536, mlp_dims=[784, 512, 512, 10],
                mlp_b=128, mlp_steps=5, cnn_b=128, cnn_hw=28, cnn_steps=2,
                triad_bytes=64 << 20, gemm_n=1024)


def setup(cfg, gen, sel):
    st = {}
    if "elementwise" in sel:
        st["ew_x"] = [uniform(gen, (cfg["ew_n"],), lo, hi, grad=True)
                      for (_, _, lo, hi, _, _) in EW_OPS]
        st["ew_w"] = uniform(gen, (cfg["ew_n"],), -1, 1, grad=True)
    if "wide" in sel:
        n = cfg["wide_n"]
        st["wide_x"] = uniform(gen, (n,), -1, 1, grad=True)
        st["wide_w"] = [uniform(gen, (n,), -1, 1, grad=True)
                        for _ in range(cfg["wide_k"])]
    if "mlp" in sel:
        d, b = cfg["mlp_dims"], cfg["mlp_b"]
        p = []
        for i in range(3):
            r = 1 / math.sqrt(d[i])
            # W as [out, in], as F.linear and ag_linear take it
            p += [uniform(gen, (d[i + 1], d[i]), -r, r, grad=True),
                  uniform(gen, (d[i + 1],), -r, r, grad=True)]
        st["mlp_p"] = p
        st["mlp_x"] = uniform(gen, (b, d[0]), -1, 1)
        st["mlp_target"] = torch.randint(0, d[3], (b,), generator=gen)
    if "cnn" in sel:
        b, hw = cfg["cnn_b"], cfg["cnn_hw"]
        p = []
        for shape in [(32, 1, 3, 3), (64, 32, 3, 3), None,
                      (128, 64 * (hw // 4) ** 2), (10, 128)]:
            if shape is None:  # BatchNorm2d's scale and shift
                p += [torch.ones(64, requires_grad=True),
                      torch.zeros(64, requires_grad=True)]
                continue
            r = 1 / math.sqrt(math.prod(shape[1:]))
            p += [uniform(gen, shape, -r, r, grad=True),
                  uniform(gen, (shape[0],), -r, r, grad=True)]
        st["cnn_p"] = p
        st["cnn_bn"] = (torch.zeros(64), torch.ones(64))
        st["cnn_x"] = uniform(gen, (b, 1, hw, hw), 0, 1)
        st["cnn_target"] = torch.randint(0, 10, (b,), generator=gen)
    if "triad" in sel:
        n = cfg["triad_bytes"] // 8
        st["triad"] = (torch.zeros(n, dtype=torch.float64),
                       torch.ones(n, dtype=torch.float64),
                       torch.full((n,), 2.0, dtype=torch.float64))
    if "gemm" in sel:
        n = cfg["gemm_n"]
        st["gemm"] = (uniform(gen, (n, n), -1, 1), uniform(gen, (n, n), -1, 1))
    return st


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def blas_name():
    """The OpenBLAS torch loaded (through libblas.so.3), and its core."""
    import ctypes
    try:
        ob = ctypes.CDLL("libopenblas.so.0")
        ob.openblas_get_config.restype = ctypes.c_char_p
        ob.openblas_get_corename.restype = ctypes.c_char_p
        return "OpenBLAS (%s; core %s)" % (
            ob.openblas_get_config().decode(),
            ob.openblas_get_corename().decode())
    except (OSError, AttributeError):
        return "unknown"


def capability():
    for line in torch.__config__.show().splitlines():
        if "CPU capability usage" in line:
            return line.split(":", 1)[1].strip().lower()
    return os.environ.get("ATEN_CPU_CAPABILITY", "default")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--workload", action="append",
                    choices=["chain", "elementwise", "wide", "mlp", "cnn",
                             "limits",
                             "triad", "gemm"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()

    sel = set(args.workload or ["chain", "elementwise", "wide", "mlp", "cnn",
                                "limits"])
    if "limits" in sel:
        sel |= {"triad", "gemm"}
    torch.set_num_threads(args.threads)
    cfg = config(args.quick)
    gen = torch.Generator().manual_seed(20260101)
    st = setup(cfg, gen, sel)
    res = Results()
    t = args.threads
    for rep in range(-args.warmup, args.reps):
        res.recording = rep >= 0
        if "chain" in sel:
            chain(res, cfg, gen, t)
        if "elementwise" in sel:
            elementwise(res, cfg, st, t)
        if "wide" in sel:
            wide(res, cfg, st, t)
        if "mlp" in sel:
            mlp(res, cfg, st, t)
        if "cnn" in sel:
            cnn(res, cfg, st, t)
        if "triad" in sel:
            triad(res, cfg, st, t)
        if "gemm" in sel:
            gemm(res, cfg, st, t)
    out = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "isa": capability(),
                    "blas": blas_name(),
                    "version": "torch " + torch.__version__},
        "run": {"threads": t, "reps": args.reps, "warmup": args.warmup,
                "torch_threads": torch.get_num_threads()},
        "results": res.to_json(),
    }
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
