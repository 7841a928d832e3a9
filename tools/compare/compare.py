#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""libag against PyTorch on the docs/benchmarks.md workloads, in one run.

Runs `ag-bench --json` and tools/compare/torch_bench.py (the same workloads
in PyTorch) interleaved: in each round every configuration runs once, the
order rotating between rounds, so a slow phase of a shared machine spreads
over all of them.  Configurations:

  libag        ag-bench in the inherited environment
  torch        PyTorch as installed (its default ATen kernels and BLAS core)
  libag-best   ag-bench with OPENBLAS_CORETYPE=SkylakeX (CPUs with AVX-512)
  torch-best   PyTorch with ATEN_CPU_CAPABILITY=avx512 and
               OPENBLAS_CORETYPE=SkylakeX (CPUs with AVX-512)

PyTorch runs with torch.set_num_threads(T) and OMP/OPENBLAS_NUM_THREADS=T
for each thread count T.  Prints the ratio table (libag / PyTorch per
figure) and writes docs/perf.md and docs/perf.png.

--fashion-mnist instead trains examples/fashion_mnist.c and
tools/compare/fashion_mnist.py (the same models and settings in PyTorch)
on Debian's dataset-fashion-mnist, interleaved the same way, and reports
seconds per training epoch side by side for each model and thread count
(libag --threads T; PyTorch torch.set_num_threads(T)), printed and
written to docs/perf-fashion-mnist.md.

Needs: Python 3 standard library, PyTorch (Debian: python3-torch) and
matplotlib (python3-matplotlib) for the chart.  Nothing in libag's build or
tests needs this script.
"""

import argparse
import datetime
import hashlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RATES = {"GB/s", "steps/s", "GFLOP/s", "req/s"}  # higher is better
WORKLOADS = ["chain", "elementwise", "wide", "mlp", "cnn", "limits"]


def find_torch_python():
    """An interpreter that can import torch: this one, else the system's."""
    cands = [sys.executable, "/usr/bin/python3", shutil.which("python3")]
    seen = set()
    for py in cands:
        if not py or py in seen or not os.path.exists(py):
            continue
        seen.add(py)
        r = subprocess.run([py, "-c", "import torch"], capture_output=True)
        if r.returncode == 0:
            return py
    return None


def build_cpp():
    """Builds torch_bench.cpp against libtorch (cached); None on failure."""
    src = os.path.join(HERE, "torch_bench.cpp")
    inc = "/usr/include/torch/csrc/api/include"
    gxx = shutil.which("g++")
    if not gxx or not os.path.isdir(inc):
        print("compare.py: no g++ or libtorch headers (%s); skipping the "
              "C++ variant" % inc, file=sys.stderr)
        return None
    # cached by the source's hash: other checkouts share the temp dir
    with open(src, "rb") as f:
        tag = hashlib.sha1(f.read()).hexdigest()[:12]
    out = os.path.join(tempfile.gettempdir(),
                       "ag-compare-torch_bench-" + tag)
    if os.path.exists(out):
        return out
    cmd = [gxx, "-O2", "-std=c++17", "-I" + inc, src, "-ltorch",
           "-ltorch_cpu", "-lc10", "-o", out]
    print("compare.py: building the libtorch variant: %s" % " ".join(cmd),
          file=sys.stderr)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr[-3000:] + "\ncompare.py: the libtorch variant did "
              "not build; skipping it", file=sys.stderr)
        return None
    return out


def find_ag_bench(arg):
    if arg:
        return arg if os.access(arg, os.X_OK) else None
    for d in ["build", "builddir", "build-release"]:
        p = os.path.join(ROOT, d, "tools", "ag-bench")
        if os.access(p, os.X_OK):
            return p
    return shutil.which("ag-bench")


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def env_str(env_add):
    return " ".join("%s=%s" % (k, shlex.quote(v))
                    for k, v in sorted(env_add.items()))


class Run:
    """One command of one configuration; its JSON is read after it ends."""

    def __init__(self, config, argv, env_add):
        self.config = config
        self.argv = argv
        self.env_add = env_add

    def command(self):
        e = env_str(self.env_add)
        return (e + " " if e else "") + " ".join(
            shlex.quote(a) for a in self.argv)


def load_avg():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


LOADS = []


def run_one(run, json_path, log):
    la = load_avg()
    if la is not None:
        LOADS.append(la)
    env = dict(os.environ)
    env.update(run.env_add)
    argv = run.argv + ["--json", json_path]
    print("  [%s] %s" % (run.config, run.command()), file=log, flush=True)
    r = subprocess.run(argv, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-2000:] + r.stderr[-4000:])
        raise SystemExit("compare.py: %s failed with status %d" %
                         (run.command(), r.returncode))
    with open(json_path) as f:
        return json.load(f)


def merge(rounds):
    """{key: dict} over rounds: median of the round medians, min, max."""
    acc = {}
    order = []
    for doc in rounds:
        for r in doc["results"]:
            key = (r["workload"], r["case"], r["threads"], r["metric"])
            if key not in acc:
                acc[key] = {"unit": r["unit"], "med": [], "min": [],
                            "max": [], "reps": 0, "status": None,
                            "reason": None}
                order.append(key)
            a = acc[key]
            if r.get("status") == "unavailable" or r.get("median") is None:
                a["status"] = "unavailable"
                a["reason"] = r.get("reason", "unavailable")
                continue
            a["med"].append(r["median"])
            a["min"].append(r["min"])
            a["max"].append(r["max"])
            a["reps"] += r["reps"]
    out = {}
    for key in order:
        a = acc[key]
        if a["med"]:
            out[key] = {"unit": a["unit"],
                        "median": statistics.median(a["med"]),
                        "min": min(a["min"]), "max": max(a["max"]),
                        "reps": a["reps"]}
        else:
            out[key] = {"unit": a["unit"], "status": "unavailable",
                        "reason": a["reason"]}
    return out, order


def fmt(v):
    if v is None:
        return "-"
    if v >= 1000:
        return "%.0f" % v
    if v >= 100:
        return "%.1f" % v
    if v >= 10:
        return "%.2f" % v
    return "%.3g" % v


def cell(e):
    """The median and the best value seen (min for times, max for rates)."""
    if e is None:
        return "-"
    if e.get("status") == "unavailable":
        return "unavailable"
    best = e["max"] if e["unit"] in RATES else e["min"]
    return "%s (best %s)" % (fmt(e["median"]), fmt(best))


def ratio(a, b):
    if not a or not b or "median" not in a or "median" not in b:
        return None
    if b["median"] == 0:
        return None
    return a["median"] / b["median"]


def speedup(a, b, unit):
    """How many times faster libag (a) is than PyTorch (b)."""
    r = ratio(a, b)
    if r is None or r == 0:
        return None
    return r if unit in RATES else 1 / r


def build_rows(res, order_keys, configs):
    rows = []
    for key in order_keys:
        wl, case, thr, metric = key
        ents = {c: res[c].get(key) for c in configs}
        unit = next(e["unit"] for e in ents.values() if e)
        rows.append((key, unit, ents))
    return rows


def table_text(rows, mine, others):
    """One table: libag config `mine` against each of `others`."""
    hdr = ["workload", "case", "thr", "metric", "unit", mine] + others + \
        ["%s/%s" % (mine, o) for o in others]
    lines = [hdr]
    for key, unit, e in rows:
        if all(e.get(c) is None for c in [mine] + others):
            continue
        wl, case, thr, metric = key
        line = [wl, case, str(thr), metric, unit, cell(e.get(mine))]
        line += [cell(e.get(o)) for o in others]
        for o in others:
            r = ratio(e.get(mine), e.get(o))
            line.append("-" if r is None else "%.2f" % r)
        lines.append(line)
    return lines


def print_table(lines):
    w = [max(len(l[i]) for l in lines) for i in range(len(lines[0]))]
    for l in lines:
        print("  ".join(s.ljust(w[i]) for i, s in enumerate(l)))


def md_table(lines):
    out = ["| " + " | ".join(lines[0]) + " |",
           "|" + "|".join("---" for _ in lines[0]) + "|"]
    for l in lines[1:]:
        out.append("| " + " | ".join(l) + " |")
    return "\n".join(out)


def chart(rows, res, configs, threads, png):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("compare.py: matplotlib not found; no chart", file=sys.stderr)
        return False
    pairs = [(m, o) for m, o in (("libag", "torch"), ("libag", "libtorch"),
                                 ("libag-best", "torch-best"),
                                 ("libag-best", "libtorch-best"))
             if m in configs and o in configs]
    labels, sp = [], {p: [] for p in pairs}
    t1 = threads[0]
    for key, unit, e in rows:
        wl, case, thr, metric = key
        if thr != t1 or metric in ("step_ms", "fwd_gbps", "bwd_gbps"):
            continue
        v = {p: speedup(e.get(p[0]), e.get(p[1]), unit) for p in pairs}
        if all(x is None for x in v.values()):
            continue
        labels.append("%s %s %s" % (wl, case, metric))
        for p in pairs:
            sp[p].append(v[p] if v[p] is not None else float("nan"))
    fig, axes = plt.subplots(1, 2, figsize=(15, 0.4 * len(labels) + 2.5),
                             gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    y = list(range(len(labels)))
    h = 0.8 / max(1, len(pairs))
    colors = ["#4477aa", "#66ccee", "#ee6677", "#ccbb44"]
    for i, p in enumerate(pairs):
        # bars grow from 1 (parity): right when libag is faster
        ax.barh([v - 0.4 + h * (i + 0.5) for v in y],
                [v - 1 for v in sp[p]], left=1, height=h,
                label="%s vs %s" % p, color=colors[i % len(colors)])
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1, color="k", lw=0.8)
    ax.set_xlabel("speedup of libag over PyTorch (>1: libag faster), "
                  "%d thread%s" % (t1, "" if t1 == 1 else "s"))
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", which="both", alpha=0.3)
    ax = axes[1]
    for c in configs:
        xs, ys = [], []
        for t in threads:
            for key, e in res[c].items():
                if key[0] == "wide" and key[3] == "bwd_ms" and key[2] == t \
                        and "median" in e:
                    xs.append(t)
                    ys.append(e["median"])
        if xs:
            ax.plot(xs, ys, marker="o", label=c)
    ax.set_xlabel("threads")
    ax.set_ylabel("wide backward, ms (median)")
    ax.set_xticks(threads)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    wcase = next((k[1] for c in configs for k in res[c] if k[0] == "wide"),
                 "")
    ax.set_title("wide %s: backward against threads" % wcase)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    return True


METHOD = """\
## ag-bench

`ag-bench` (tools/bench/, installed with libag) runs the workloads of
docs/benchmarks.md with libag's public API only and prints a table with median,
min and max per figure, the CPU model, the ISA path (`AG_ISA` or `auto`),
the BLAS and its core, `OPENBLAS_CORETYPE`, the thread counts, the peak
RSS and the machine load while it measured, and how fast each CPU runs
a plain C loop at the start and at the end, with the CPU the main thread
was on: on this shared host one virtual CPU is at times 25-35% slower than
the other for minutes on end, and `chain` then measures 107-127 / 120-143
ns per node on it against 70-74 / 89-96 on the other (`taskset -c N`
picks one).

```
ag-bench                        every workload, threads 1 and all CPUs,
                                7 repetitions after 1 warm-up (< 2 min)
ag-bench --workload mlp --workload wide --threads 1,2 --reps 15
ag-bench --json out.json        the same figures for scripts
ag-bench --trace wide.json      Chrome/Perfetto trace of one wide backward
ag-bench --workload wide --workload wide-loop --threads 1,2
                                wide's backward speedup beside that of a
                                bare loop over the same memory: the most
                                the machine allows at that moment
ag-bench --quick                tiny sizes plus gradient checks; exit 1 on
                                a mismatch (meson test --suite bench)
```

`--quick` checks libag's gradients on every workload: chain against the
f64 recurrence `d = prod_k (1 + 0.001 (1 - tanh(y_k)^2))`; elementwise
against the closed-form derivatives (and `dx = w`, `dw = x` for mul); wide
against `sum_k w_k prod_j (1 - h_j^2)` for x and `x prod_j (...)` for w_0;
mlp by central finite differences in f64 on the largest-gradient element
of each parameter, then by the loss falling over 31 SGD steps in f32; cnn
the same way (f64 at B=3 on 8x8 images, then 11 SGD steps in f32); the
triad, the GEMM and wide-loop against plain loops.  Ops that do not exist yet (today:
`sin`) are reported as unavailable (`"status": "unavailable"` in the JSON),
never as a figure.  Without ag/pool.h libag runs on one thread, and
ag-bench says so and skips its figures at higher thread counts.

## Reading these figures

On a shared machine the other tenants' load lengthens every figure (the
load line above says how busy it was), and page faults get expensive.
Before libag cached big blocks (commit "alloc: cache big blocks"), its
`elementwise`, `wide` and `chain S=1024` figures were dominated by the
kernel faulting in fresh pages for every output and gradient: `exp`
forward on 2^22 elements took 340 ms against 2.0 ms with glibc told to
keep freed memory, and 32 chained `tanh` on 65536 elements 9-10 ns per
element against 0.3-0.5 ns.  PyTorch's columns can still show that effect
where its allocator returns memory (its medians far above its best
values).

## What is measured

All tensors are float32, inputs uniform in [-1, 1) (log: [0.5, 2)), fixed
seeds.  Each figure is the median over repetitions after a warm-up; the
table shows the median of the per-round medians and the smallest value
seen (min), because noise on a shared machine only ever adds time.
Repetitions are interleaved inside `ag-bench` (every workload and thread
count once per repetition) and the configurations are interleaved by
`compare.py` (one run of each per round, rotating the order).

| workload | timed | figure |
|---|---|---|
| chain | forward: building `y = y + 0.001 * tanh(y)` N = 10000 times and `sum`; backward: `backward()` | ns per node, nodes = 3N + 1 |
| elementwise | forward: `y = op(x)` alone; backward: the whole `backward()` of `sum(y)` (the SumBackward expand, the op's derivative and the accumulation into `x.grad`) | ms, and GB/s = nominal bytes of the op's own kernels / time |
| wide | forward: K = 16 branches `h = x * w_k`, 32 x `tanh`, `sum`, summed; backward: `backward()` | ms |
| mlp | one step: forward + backward + SGD update + dropping the grads | steps/s, ms |
| cnn | one step of the Fashion-MNIST-sized CNN, as for mlp | steps/s, ms |
| limits | triad: one pass of `a = b + 3 c` over three 64 MiB f64 arrays; GEMM: one 1024^3 f32 product; wide-loop (ag-bench only): wide's backward memory traffic as a bare loop, `g *= 1 - y_j^2` over the K x 32 saved arrays a forward just wrote, branches taken one at a time by POSIX threads | GB/s (3 x 64 MiB / time), GFLOP/s (2 n^3 / time), ms |

**Bytes behind GB/s** (f32, per element of x): a unary forward reads x and
writes y, 8 B; its backward kernel reads the incoming gradient and one saved
tensor (x for log/sin, the result for exp/tanh/sigmoid) and writes the input
gradient, 12 B.  `mul` (x * w) reads two and writes one, 12 B, forward; its
backward runs two such kernels (g * w and g * x), 24 B.  These are nominal
counts: the backward time includes the SumBackward expand and the gradient
accumulation, so the backward GB/s understate the kernel itself, the same
way for both libraries.

**The MLP step** is libag's `ag_linear` and `ag_cross_entropy` (each one
node, as PyTorch's `F.linear` and `F.cross_entropy`), and PyTorch runs the
very same graph:
```
h1 = relu(linear(x, W1, b1))    x: [128, 784], W: [out, in], b: [out]
h2 = relu(linear(h1, W2, b2))
z  = linear(h2, W3, b3)         z: [128, 10]
loss = cross_entropy(z, targets)                mean over the batch
backward(loss)
under no-grad, for each parameter p: g = p.grad; g *= 0.01; p -= g;
drop p.grad (set to None)
```
Until the ops existed the step was composed from matmul, add, exp,
sum_dim, log and a mul by a -1/B one-hot mask (that graph first caught a
libag bug through `ag-bench --quick`: the backward of a unary op on a 0-d
tensor accumulated into an uninitialised buffer).  ag-bench also times the
step's GEMMs alone, at the step's shapes and transposes (`gemm_ms`,
`gemm_gflops`), and reports their part of the step (`gemm_share`, % of
`step_ms` in the same repetition); the rest of the step, `step_ms -
gemm_ms`, is what libag adds around the BLAS.

**The CNN step** (`cnn`, case `fmnist-cnn,B=128`): x [128, 1, 28, 28]
uniform in [0, 1); conv 1->32 3x3 pad 1, ReLU, maxpool 2; conv 32->64 3x3
pad 1, BatchNorm2d in training mode (momentum 0.1, eps 1e-5), ReLU,
maxpool 2; flatten to [128, 3136]; linear 3136->128, ReLU; linear 128->10;
cross-entropy against random targets; the same SGD update as the MLP.
libag: `ag_conv2d`, `ag_relu`, `ag_max_pool2d`, `ag_batch_norm`,
`ag_reshape`, `ag_linear`, `ag_cross_entropy`; PyTorch: `F.conv2d`,
`F.max_pool2d`, `F.batch_norm`, `F.linear`, `F.cross_entropy`.

**Triad** is ag-bench's own C loop (POSIX threads for more than one
thread); the PyTorch column is `torch.add(b, c, alpha=3, out=a)` on f64
tensors of the same size.  **GEMM** is `ag_matmul` (OpenBLAS, which libag
runs one thread per call and splits over its own pool when it has one)
against `torch.mm`.
"""


SERVE_GOALS = [
    # (description, case template, metric, minimum speedup)
    ("batch-1 inference req/s >= 3x at T=2", "%s,B=1,T=2,infer",
     "requests_per_s", 3.0),
    ("batch-1 inference req/s >= 3x at T=64", "%s,B=1,T=64,infer",
     "requests_per_s", 3.0),
    ("batch-1 inference p99 <= 0.5x at T=2", "%s,B=1,T=2,infer",
     "p99_us", 2.0),
    ("batch-1 inference p99 <= 0.5x at T=64", "%s,B=1,T=64,infer",
     "p99_us", 2.0),
    ("batch-32 inference req/s >= 1.2x at T=2", "%s,B=32,T=2,infer",
     "requests_per_s", 1.2),
    ("batch-32 inference req/s >= 1.2x at T=64", "%s,B=32,T=64,infer",
     "requests_per_s", 1.2),
    ("fwd+bwd batch-1 req/s >= 3x at T=2", "%s,B=1,T=2,grad",
     "requests_per_s", 3.0),
    ("fwd+bwd batch-1 req/s >= 3x at T=64", "%s,B=1,T=64,grad",
     "requests_per_s", 3.0),
]


# How libtorch services run one intra-op thread per request thread: the
# environment as well as at::set_num_threads(1) in each thread.  With the
# call alone, libtorch 1.13's cnn served 5x fewer batch-1 requests at 2
# request threads than at 1 (OpenMP still ran teams); with these, as many.
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def serve_main(args, agb):
    """ag-bench --workload serve against torch_bench's serve, one run.

    Configurations, interleaved over rounds with the order rotating:
    libag; libtorch with at::set_num_threads(1) in each request thread
    and ONE_THREAD_ENV (how libtorch services are deployed); libtorch-intra
    with its default intra-op pool; with --serve-gate N, also libag behind
    an ag_gate of N places (libag-gate) and libtorch behind the same gate
    (libtorch-gate, torch_bench's copy of it).  Prints each figure side by
    side with libag's speedups (rates: libag/libtorch; latencies:
    libtorch/libag) and the issue-16 goals against the per-thread libtorch.
    """
    cpp = build_cpp()
    if not cpp:
        print("compare.py: --serve needs the libtorch C++ variant",
              file=sys.stderr)
        return 2
    extra = ["--workload", "serve", "--reps", str(args.reps),
             "--warmup", str(args.warmup)]
    if args.serve_threads:
        extra += ["--serve-threads", args.serve_threads]
    if args.serve_model:
        extra += ["--serve-model", args.serve_model]
    if args.serve_requests:
        extra += ["--serve-requests", str(args.serve_requests)]
    if args.serve_seconds is not None:
        extra += ["--serve-seconds", str(args.serve_seconds)]
    if args.quick:
        extra.append("--quick")
    gate = ["--serve-gate", str(args.serve_gate),
            "--serve-quantum", str(args.serve_quantum)]
    runs = [Run("libag", [agb] + extra, {}),
            Run("libtorch", [cpp] + extra, ONE_THREAD_ENV),
            Run("libtorch-intra", [cpp] + extra + ["--serve-intra"], {})]
    if args.serve_gate:
        runs += [Run("libag-gate", [agb] + extra + gate, {}),
                 Run("libtorch-gate", [cpp] + extra + gate, ONE_THREAD_ENV)]
    configs = [r.config for r in runs]
    docs = {c: [] for c in configs}
    tmp = tempfile.mkdtemp(prefix="ag-serve-")
    log = sys.stderr
    for rnd in range(args.rounds):
        k = rnd % len(runs)
        print("round %d/%d" % (rnd + 1, args.rounds), file=log)
        for i, run in enumerate(runs[k:] + runs[:k]):
            path = os.path.join(tmp, "%02d-%s.json" % (rnd, run.config))
            docs[run.config].append(run_one(run, path, log))
            if args.save_json:
                os.makedirs(args.save_json, exist_ok=True)
                shutil.copy(path, args.save_json)
    res = {}
    order = None
    for c in configs:
        res[c], o = merge(docs[c])
        if c == "libag":
            order = o
        # ",intra" and ",gate" name the configuration: key as libag's
        plain = {}
        for (wl, case, thr, metric), e in res[c].items():
            case = case.replace(",intra", "").replace(",gate", "")
            plain[(wl, case, thr, metric)] = e
        res[c] = plain
    # (column, numerator config, denominator config)
    ratios = [("x libtorch", "libag", "libtorch"),
              ("x intra", "libag", "libtorch-intra")]
    if args.serve_gate:
        ratios += [("gate x libtorch", "libag-gate", "libtorch"),
                   ("gate x gate", "libag-gate", "libtorch-gate")]
    hdr = ["case", "metric", "unit"] + configs + [r[0] for r in ratios]
    lines = [hdr]
    for key in order:
        wl, case, thr, metric = key
        if wl != "serve":
            continue
        a = res["libag"].get(key)
        unit = a["unit"] if a else "-"
        row = [case.replace(",gate", ""), metric, unit]
        row += [fmt(res[c].get(key) and res[c][key].get("median"))
                for c in configs]
        for _, num, den in ratios:
            sp = None
            if unit not in ("MiB", "req"):
                sp = speedup(res[num].get(key), res[den].get(key), unit)
            row.append("%.2fx" % sp if sp else "-")
        lines.append(row)
    print_table(lines)
    rounds = args.rounds
    print("\nmedians of %d round(s) x %d rep(s); speedup = libag over "
          "libtorch (rates) or libtorch over libag (latencies)" %
          (rounds, args.reps))
    if args.serve_gate:
        print("gate: %d places, quantum %d us (ag_gate on libag's side, "
              "torch_bench's copy of it on libtorch's)" %
              (args.serve_gate, args.serve_quantum))
    if LOADS:
        print("1-min load average during the runs: %.2f-%.2f on %d CPUs" %
              (min(LOADS), max(LOADS), os.cpu_count() or 1))
    pairs = [("libag", "libtorch")]
    if args.serve_gate:
        pairs += [("libag-gate", "libtorch"), ("libag-gate", "libtorch-gate")]
    for num, den in pairs:
        print("\ngoals (issue 16), %s against %s:" % (num, den))
        for model in ("mlp", "cnn"):
            for desc, tmpl, metric, want in SERVE_GOALS:
                key = ("serve", tmpl % model, int(tmpl.split("T=")[1]
                                                  .split(",")[0]), metric)
                a = res[num].get(key)
                b = res[den].get(key)
                if not a or not b:
                    continue
                sp = speedup(a, b, a["unit"])
                if sp is None:
                    continue
                print("  %-4s %-42s %6.2fx  %s" %
                      (model, desc, sp, "met" if sp >= want else "NOT met"))
    return 0




def fm_run(argv, env_add):
    """One training run; (seconds per epoch list, test accuracy)."""
    env = dict(os.environ)
    env.update(env_add)
    print("  %s" % Run("", argv, env_add).command(), file=sys.stderr,
          flush=True)
    la = load_avg()
    if la is not None:
        LOADS.append(la)
    r = subprocess.run(argv, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit("compare.py: %s failed:\n%s%s" % (
            argv[0], r.stdout[-2000:], r.stderr[-2000:]))
    n, secs, acc = None, [], None
    for line in r.stdout.splitlines():
        w = line.split()
        if " training images" in line and n is None:
            n = int(w[w.index("training") - 1])
        elif line.startswith("epoch") and "images/s" in w:
            # images/s has 4+ significant digits where "x.x s" has 2
            secs.append(n / float(w[w.index("images/s") - 1]))
        elif line.startswith("test accuracy"):
            acc = float(w[2])
    if n is None or not secs:
        raise SystemExit("compare.py: cannot read %s's output:\n%s" %
                         (argv[0], r.stdout[-2000:]))
    return secs, acc


def fashion_mnist_mode(args, py):
    exe = args.fm_binary or os.path.join(ROOT, "build", "examples",
                                         "fashion_mnist")
    if not os.access(exe, os.X_OK):
        print("compare.py: %s not found; build it (meson setup build && "
              "ninja -C build) or pass --fm-binary" % exe, file=sys.stderr)
        return 2
    script = os.path.join(HERE, "fashion_mnist.py")
    threads = [int(t) for t in (args.threads or "1,2").split(",")]
    models = args.fm_models.split(",")
    common = ["--epochs", str(args.fm_epochs), "--limit", str(args.fm_limit)]
    res = {}
    start = datetime.datetime.now(datetime.timezone.utc)
    with tempfile.TemporaryDirectory() as tmp:
        ck = os.path.join(tmp, "ck.safetensors")
        for rnd in range(args.rounds):
            print("round %d/%d" % (rnd + 1, args.rounds), file=sys.stderr)
            for m in models:
                for t in threads:
                    env = {"OMP_NUM_THREADS": str(t),
                           "OPENBLAS_NUM_THREADS": str(t)}
                    runs = [("libag", [exe, "--model", m, "--threads", str(t),
                                       "--checkpoint", ck] + common, {}),
                            ("torch", [py, script, "--model", m, "--threads",
                                       str(t)] + common, env)]
                    if rnd % 2:
                        runs.reverse()
                    for who, argv, e in runs:
                        secs, acc = fm_run(argv, e)
                        r = res.setdefault((m, t, who),
                                           {"secs": [], "acc": []})
                        r["secs"] += secs
                        r["acc"].append(acc)
    end = datetime.datetime.now(datetime.timezone.utc)
    lines = [("model", "threads", "libag s/epoch", "PyTorch s/epoch",
              "speedup", "libag acc", "PyTorch acc")]
    for m in models:
        for t in threads:
            a, b = res[(m, t, "libag")], res[(m, t, "torch")]
            sa, sb = (statistics.median(a["secs"]),
                      statistics.median(b["secs"]))
            lines.append((m, str(t), "%.2f (best %.2f)" % (sa, min(a["secs"])),
                          "%.2f (best %.2f)" % (sb, min(b["secs"])),
                          "%.2fx" % (sb / sa),
                          "%.4f" % statistics.median(a["acc"]),
                          "%.4f" % statistics.median(b["acc"])))
    print("\nseconds per training epoch (median over %d round(s) x %d "
          "epoch(s)); speedup = PyTorch / libag, > 1 means libag is faster"
          % (args.rounds, args.fm_epochs))
    print_table(lines)
    if args.no_write:
        return 0
    md = ["# Fashion-MNIST: libag against PyTorch per epoch\n",
          "Generated by `tools/compare/compare.py --fashion-mnist` on %s UTC "
          "(run took %.0f s).\n" % (start.strftime("%Y-%m-%d %H:%M"),
                                    (end - start).total_seconds()),
          "- CPU: %s, %d logical CPUs online" % (
              cpu_name(), os.cpu_count() or 1),
          "- 1-minute load average when each run started: min %.1f, "
          "median %.1f, max %.1f%s" % (
              min(LOADS), statistics.median(LOADS), max(LOADS),
              " (a shared, busy machine: every figure is pessimistic)"
              if max(LOADS) > (os.cpu_count() or 1) else "")
          if LOADS else "- load average: unknown",
          "- %s training images per epoch (--limit %d: the first N of the "
          "training and test sets), %d epoch(s) per run, batch 128; "
          "libag `%s`, PyTorch `tools/compare/fashion_mnist.py` under "
          "`/usr/bin/python3` with OMP/OPENBLAS_NUM_THREADS = threads" % (
              args.fm_limit or 60000, args.fm_limit, args.fm_epochs,
              os.path.relpath(exe, ROOT)),
          "- models and optimisers: examples/fashion_mnist.c's header; the "
          "accuracies are on the limited test set after these few epochs, "
          "a check that both trained, not the published figures\n",
          md_table(lines), ""]
    os.makedirs(os.path.dirname(args.fm_md), exist_ok=True)
    with open(args.fm_md, "w") as f:
        f.write("\n".join(md))
    print("\nwrote %s" % args.fm_md)
    return 0


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main():
    ap = argparse.ArgumentParser(
        description="libag vs PyTorch on the docs/benchmarks.md workloads")
    ap.add_argument("--ag-bench", help="path to ag-bench "
                    "(default: build/tools/ag-bench, then $PATH)")
    ap.add_argument("--threads", default=None,
                    help="thread counts, e.g. 1,2 (default: 1 and all CPUs)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5,
                    help="repetitions per configuration and round")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--workload", action="append", choices=WORKLOADS)
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes (a smoke test of this script)")
    ap.add_argument("--no-cpp", action="store_true",
                    help="skip the libtorch C++ variant")
    ap.add_argument("--no-best", action="store_true",
                    help="skip the AVX-512 configurations")
    ap.add_argument("--md", default=os.path.join(ROOT, "docs", "perf.md"))
    ap.add_argument("--png", default=os.path.join(ROOT, "docs", "perf.png"))
    ap.add_argument("--from-json", metavar="DIR",
                    help="run nothing: redraw from a --save-json directory")
    ap.add_argument("--png-only", action="store_true",
                    help="write the chart only, not docs/perf.md")
    ap.add_argument("--save-json", metavar="DIR",
                    help="keep every run's JSON in DIR")
    ap.add_argument("--serve", action="store_true",
                    help="the serve workload only (issue 16): libag "
                    "against libtorch per request thread and with its "
                    "intra-op pool, side by side; writes nothing")
    ap.add_argument("--serve-threads", help="request threads, e.g. 2,64")
    ap.add_argument("--serve-model", choices=["mlp", "cnn"])
    ap.add_argument("--serve-requests", type=int,
                    help="requests per thread (default: a budget per case)")
    ap.add_argument("--serve-seconds", type=float,
                    help="no request starts after this many seconds of a "
                    "case, the same rule on both sides (default 2; 0: none)")
    ap.add_argument("--serve-gate", type=int, default=os.cpu_count() or 1,
                    metavar="N",
                    help="also run both libraries behind an admission gate "
                    "of N places (ag_gate; torch_bench has a copy); "
                    "default the online CPUs, 0: not")
    ap.add_argument("--serve-quantum", type=int, default=1000, metavar="US",
                    help="the gate's quantum in microseconds (default 1000)")
    ap.add_argument("--no-write", action="store_true",
                    help="print the table only")
    ap.add_argument("--fashion-mnist", action="store_true",
                    help="train examples/fashion_mnist.c against "
                    "tools/compare/fashion_mnist.py instead; seconds per "
                    "epoch (--threads default 1,2)")
    ap.add_argument("--fm-models", default="mlp,cnn")
    ap.add_argument("--fm-epochs", type=int, default=1)
    ap.add_argument("--fm-limit", type=int, default=12000,
                    help="training images per epoch (0: all 60000)")
    ap.add_argument("--fm-binary", help="path to the fashion_mnist example "
                    "(default: build/examples/fashion_mnist)")
    ap.add_argument("--fm-md", default=os.path.join(
        ROOT, "docs", "perf-fashion-mnist.md"))
    args = ap.parse_args()

    py = find_torch_python()
    if py and py != sys.executable and not os.environ.get("AG_COMPARE_REEXEC"):
        # this interpreter lacks torch (e.g. a pyenv shim): rerun under the
        # one that has it, which is also where Debian puts matplotlib
        os.environ["AG_COMPARE_REEXEC"] = "1"
        os.execv(py, [py] + sys.argv)
    if not py:
        print("compare.py: PyTorch is not installed (no python3 here can "
              "`import torch`).\nInstall it (Debian: apt-get install "
              "python3-torch) to compare; libag itself does not need it.",
              file=sys.stderr)
        return 2
    if args.fashion_mnist:
        return fashion_mnist_mode(args, py)
    agb = find_ag_bench(args.ag_bench)
    if not agb:
        print("compare.py: ag-bench not found; build it (meson setup build "
              "&& ninja -C build) or pass --ag-bench PATH", file=sys.stderr)
        return 2
    if args.serve:
        return serve_main(args, agb)
    ncpu = os.cpu_count() or 1
    if args.threads:
        threads = [int(t) for t in args.threads.split(",")]
    else:
        threads = [1] + ([ncpu] if ncpu > 1 else [])
    avx512 = "avx512f" in cpu_flags() and not args.no_best
    wl = args.workload or WORKLOADS
    common = ["--reps", str(args.reps), "--warmup", str(args.warmup)]
    for w in wl:
        common += ["--workload", w]
    if args.quick:
        common.append("--quick")
    tb = os.path.join(HERE, "torch_bench.py")
    cpp = None if args.no_cpp or args.from_json else build_cpp()

    configs = ["libag", "torch"] + (["libtorch"] if cpp else [])
    if avx512:
        configs += ["libag-best", "torch-best"] + (
            ["libtorch-best"] if cpp else [])
    best_env = {"OPENBLAS_CORETYPE": "SkylakeX"}
    runs = {}
    thr_arg = ",".join(str(t) for t in threads)
    runs["libag"] = [Run("libag", [agb, "--threads", thr_arg] + common, {})]
    runs["torch"] = [Run("torch", [py, tb, "--threads", str(t)] + common,
                         {"OMP_NUM_THREADS": str(t),
                          "OPENBLAS_NUM_THREADS": str(t)})
                     for t in threads]
    if avx512:
        runs["libag-best"] = [Run("libag-best",
                                  [agb, "--threads", thr_arg] + common,
                                  dict(best_env))]
        runs["torch-best"] = [
            Run("torch-best", [py, tb, "--threads", str(t)] + common,
                dict(best_env, ATEN_CPU_CAPABILITY="avx512",
                     OMP_NUM_THREADS=str(t), OPENBLAS_NUM_THREADS=str(t)))
            for t in threads]
    for c in ("libtorch", "libtorch-best"):
        if c not in configs:
            continue
        envb = dict(best_env, ATEN_CPU_CAPABILITY="avx512") \
            if c.endswith("best") else {}
        runs[c] = [Run(c, [cpp, "--threads", str(t)] +
                       [a for a in common],
                       dict(envb, OMP_NUM_THREADS=str(t),
                            OPENBLAS_NUM_THREADS=str(t)))
                   for t in threads]

    docs = {c: [] for c in configs}
    machine = {}
    start = datetime.datetime.now(datetime.timezone.utc)
    if args.from_json:
        # redraw from a saved run (--save-json): NN-config.json files
        docs = {}
        for fn in sorted(os.listdir(args.from_json)):
            if not fn.endswith(".json") or "-" not in fn:
                continue
            c = fn[:-5].split("-", 1)[1]
            with open(os.path.join(args.from_json, fn)) as f:
                d = json.load(f)
            docs.setdefault(c, []).append(d)
            machine.setdefault(c, d["machine"])
        configs = [c for c in ("libag", "torch", "libtorch", "libag-best",
                               "torch-best", "libtorch-best") if c in docs]
        if not configs:
            raise SystemExit("compare.py: no NN-config.json in %s" %
                             args.from_json)
    with tempfile.TemporaryDirectory() as tmp:
        n = 0
        for rnd in range(0 if args.from_json else args.rounds):
            print("round %d/%d" % (rnd + 1, args.rounds), file=sys.stderr)
            k = rnd % len(configs)
            for c in configs[k:] + configs[:k]:
                for r in runs[c]:
                    n += 1
                    jdir = args.save_json or tmp
                    os.makedirs(jdir, exist_ok=True)
                    d = run_one(r, os.path.join(
                        jdir, "%02d-%s.json" % (n, r.config)), sys.stderr)
                    docs[c].append(d)
                    machine.setdefault(c, d["machine"])
    end = datetime.datetime.now(datetime.timezone.utc)

    res, orders = {}, {}
    for c in configs:
        res[c], orders[c] = merge(docs[c])
    keys = list(orders["libag"])
    for c in configs:
        for key in orders[c]:
            if key not in keys:
                keys.append(key)
    keys.sort(key=lambda k: (wl.index(k[0]) if k[0] in wl else 99,
                             k[2], ))
    rows = build_rows(res, keys, configs)
    tables = [("stock", table_text(rows, "libag", [c for c in (
        "torch", "libtorch") if c in configs]))]
    if avx512:
        tables.append(("best", table_text(rows, "libag-best", [
            c for c in ("torch-best", "libtorch-best") if c in configs])))
    print()
    print("ratio = libag / PyTorch per figure (times: < 1 means libag is "
          "faster; GB/s, steps/s, GFLOP/s: > 1 means libag is faster)")
    for name, lines in tables:
        print("\n%s configurations:" % name)
        print_table(lines)
    if args.no_write:
        return 0

    os.makedirs(os.path.dirname(args.md), exist_ok=True)
    have_png = chart(rows, res, configs, threads, args.png)
    if args.png_only:
        print("\nwrote %s" % args.png)
        return 0
    cmds = [r.command() for c in configs for r in runs.get(c, [])]
    m = machine["libag"]
    ag_run = docs["libag"][0].get("run", {})
    unav = sorted({"%s %s: %s" % (k[0], k[1], e.get("reason", ""))
                   for k, e in res["libag"].items()
                   if e.get("status") == "unavailable"})
    wide_sp = []
    for c in configs:
        b = {k[2]: e["median"] for k, e in res[c].items()
             if k[0] == "wide" and k[3] == "bwd_ms" and "median" in e}
        if 1 in b and len(b) > 1:
            for t in sorted(b):
                if t != 1:
                    wide_sp.append("%s: %.2fx (1 -> %d threads)" %
                                   (c, b[1] / b[t], t))
    md = []
    md.append("# Performance: libag against PyTorch\n")
    md.append("Generated by `tools/compare/compare.py` on %s UTC (run took "
              "%.0f s).  Every figure below is from that one run.\n" %
              (start.strftime("%Y-%m-%d %H:%M"),
               (end - start).total_seconds()))
    md.append("## Machine\n")
    md.append("- CPU: %s, %s logical CPUs online" % (m["cpu"], m["cores"]))
    md.append("- libag %s: `%s` (ag_build_config(); AG_ISA %s, AG_GEMM "
              "%s), BLAS %s" % (m["version"],
                                m.get("libag_config", "?"),
                                "=" + os.environ["AG_ISA"]
                                if "AG_ISA" in os.environ else "unset",
                                "=" + os.environ["AG_GEMM"]
                                if "AG_GEMM" in os.environ else "unset",
                                m["blas"]))
    md.append("- libag threads: %s" % (
        "libag's pool (ag/pool.h)" if ag_run.get("pool") else
        "**1 only** -- ag/pool.h is not in this build yet, so the libag "
        "figures at more than one thread are missing (the triad, which is "
        "the tool's own loop, still runs on all of them)"))
    if "libag-best" in machine:
        md.append("- libag-best: BLAS %s" % machine["libag-best"]["blas"])
    md.append("- PyTorch: %s, ATen CPU capability `%s`, BLAS %s" % (
        machine["torch"]["version"], machine["torch"]["isa"],
        machine["torch"]["blas"]))
    if "libtorch" in machine:
        md.append("- libtorch: the same library through its C++ API "
                  "(tools/compare/torch_bench.cpp, built with g++ -O2), "
                  "without Python's per-op overhead")
    if "torch-best" in machine:
        md.append("- torch-best: ATen CPU capability `%s`, BLAS %s" % (
            machine["torch-best"]["isa"], machine["torch-best"]["blas"]))
    md.append("- OPENBLAS_CORETYPE in the environment: %s" %
              os.environ.get("OPENBLAS_CORETYPE", "unset"))
    md.append("- ag-bench peak RSS (first round): %.0f MiB" %
              (ag_run.get("peak_rss_kib", 0) / 1024))
    if LOADS:
        cpw = [d.get("run", {}).get("cpu_per_wall") for d in docs["libag"]]
        cpw = [v for v in cpw if v]
        md.append("- **machine load** (1-minute load average when each of "
                  "the %d runs started): min %.1f, median %.1f, max %.1f on "
                  "%s CPUs%s%s" % (
                      len(LOADS), min(LOADS), statistics.median(LOADS),
                      max(LOADS), m["cores"],
                      "; ag-bench got %.2f CPU-seconds per wall-second "
                      "(median over rounds)" % statistics.median(cpw)
                      if cpw else "",
                      ".  The machine was shared and busy: every figure is "
                      "pessimistic, and the `best` values say more than the "
                      "medians" if max(LOADS) > (m["cores"] or 1) else ""))
    speeds = {}
    for d in docs["libag"]:
        for key in ("cpu_loop_ns_start", "cpu_loop_ns_end"):
            for i, v in enumerate(d.get("machine", {}).get(key) or []):
                if v:
                    speeds.setdefault(i, []).append(v)
    if speeds:
        fast = min(min(v) for v in speeds.values())
        md.append("- **CPU speed** (ns per iteration of ag-bench's plain C "
                  "loop pinned to each CPU, at the start and end of each "
                  "libag run; lower is faster): %s.%s" % (
                      ", ".join("cpu%d %.2f-%.2f" % (i, min(v), max(v))
                                for i, v in sorted(speeds.items())),
                      "  One CPU was at times %.0f%% slower than the "
                      "fastest: the host is shared, and a figure depends "
                      "on which CPU its thread ran on" % (
                          100 * (max(max(v) for v in speeds.values()) /
                                 fast - 1))
                      if max(max(v) for v in speeds.values()) > 1.15 * fast
                      else ""))
    md.append("")
    md.append("## Commands\n")
    md.append("```")
    md.append("meson setup build -Dtests=false && ninja -C build   "
              "# the default buildtype, debugoptimized")
    md.append(" ".join(shlex.quote(a) for a in
                       [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]))
    md.append("# which ran, %d round(s), rotating the order each round:" %
              args.rounds)
    for cmd in cmds:
        md.append(cmd.replace(ROOT + "/", "").replace(
            os.path.dirname(agb) + "/", os.path.relpath(
                os.path.dirname(agb), ROOT) + "/"
            if os.path.dirname(agb).startswith(ROOT) else
            os.path.dirname(agb) + "/"))
    md.append("```\n")
    md.append("## Results\n")
    md.append("Median over %d round(s) x %d repetition(s) (median of the "
              "round medians), with the best value seen.  **ratio = "
              "libag / PyTorch**: for times (ns, ms) below 1 means libag is "
              "faster; for rates (GB/s, steps/s, GFLOP/s) above 1 means "
              "libag is faster.  `best` = `OPENBLAS_CORETYPE=SkylakeX` for "
              "both and `ATEN_CPU_CAPABILITY=avx512` for PyTorch.\n" %
              (args.rounds, args.reps))
    for name, lines in tables:
        if name == "stock":
            md.append("### Stock: as installed\n")
        else:
            md.append("### Best: AVX-512 kernels and the SkylakeX BLAS "
                      "core\n")
        md.append(md_table(lines) + "\n")
    if wide_sp:
        md.append("**wide backward speedup** with threads: " +
                  "; ".join(wide_sp) + ".\n")
    if have_png:
        md.append("![speedup of libag over PyTorch; wide backward against "
                  "threads](%s)\n" % os.path.relpath(
                      args.png, os.path.dirname(args.md)))
    md.append("## Unavailable\n")
    if unav:
        for u in unav:
            md.append("- " + u)
    else:
        md.append("- nothing: every workload ran")
    if "libtorch" not in configs:
        md.append("- the libtorch C++ variant (skipped in this run: no g++ "
                  "or libtorch headers, or --no-cpp)")
    md.append("- libtorch C++ variant: no triad (the Python columns have "
              "it)\n")
    md.append(METHOD)
    with open(args.md, "w") as f:
        f.write("\n".join(md))
    print("\nwrote %s%s" % (args.md, " and " + args.png if have_png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
