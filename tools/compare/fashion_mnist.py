#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""examples/fashion_mnist.c in PyTorch: the same models, data and settings.

  fashion_mnist.py [--model mlp|cnn] [--epochs N] [--batch B] [--threads T]
                   [--lr X] [--seed S] [--limit N] [--data DIR]
                   [--schedule cosine|constant]

The same IDX files (Debian's dataset-fashion-mnist), normalised as
examples/fmnist.c does ((x / 255 - 0.2860) / 0.3530), reshuffled every
epoch, batches sliced from one tensor (no DataLoader, as libag's example
has none), the last batch short.  Models and optimisers as the C example:

  mlp: 784-512-512-10, ReLU, dropout 0.2, Adam (lr 1e-3)
  cnn: conv 1->32 3x3 pad 1, ReLU, maxpool 2, conv 32->64 3x3 pad 1,
       BatchNorm2d, ReLU, maxpool 2, linear 3136->128, ReLU, linear 128->10;
       AdamW (lr 1e-3, weight decay 1e-2)

The lr anneals per epoch from --lr to 0 over --epochs (CosineAnnealingLR),
or stays at --lr with --schedule constant, as in the C example.  Torch's own initialisation (the same
distributions as libag's, other random numbers).  Prints one line per
epoch in the C example's format (compare.py parses "images/s") and the
test accuracy in eval mode.  Needs PyTorch and numpy (/usr/bin/python3).
"""

import argparse
import gzip
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DATA = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530


def read_idx(path, magic):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    got = struct.unpack(">I", raw[:4])[0]
    if got != magic:
        raise SystemExit("%s: magic %#x, want %#x" % (path, got, magic))
    dims = [struct.unpack(">I", raw[4 + 4 * i:8 + 4 * i])[0]
            for i in range(magic & 0xff)]
    off = 4 + 4 * len(dims)
    return np.frombuffer(raw, dtype=np.uint8, offset=off).reshape(dims)


def load(data, train):
    p = "train" if train else "t10k"
    x = read_idx(os.path.join(data, p + "-images-idx3-ubyte.gz"), 0x803)
    y = read_idx(os.path.join(data, p + "-labels-idx1-ubyte.gz"), 0x801)
    x = (torch.from_numpy(x.astype(np.float32)) / 255 - MEAN) / STD
    return x.reshape(-1, 1, 28, 28).contiguous(), \
        torch.from_numpy(y.astype(np.int64))


def mlp():
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(512, 512), nn.ReLU(), nn.Dropout(0.2), nn.Linear(512, 10))


def cnn():
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(),
        nn.Linear(128, 10))


def evaluate(m, x, y, batch=1000):
    m.eval()
    right = 0
    with torch.inference_mode():
        for i in range(0, len(y), batch):
            right += (m(x[i:i + batch]).argmax(1) ==
                      y[i:i + batch]).sum().item()
    return right / max(len(y), 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--schedule", choices=["cosine", "constant"],
                    default="cosine")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    xtr, ytr = load(a.data, True)
    xte, yte = load(a.data, False)
    if a.limit:
        xtr, ytr, xte, yte = (xtr[:a.limit], ytr[:a.limit], xte[:a.limit],
                              yte[:a.limit])
    m = mlp() if a.model == "mlp" else cnn()
    if a.model == "mlp":
        opt = torch.optim.Adam(m.parameters(), lr=a.lr)
    else:
        opt = torch.optim.AdamW(m.parameters(), lr=a.lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.epochs) \
        if a.schedule == "cosine" else None
    print("%s on %d training images, batch %d, %d thread(s) (PyTorch %s)" %
          (a.model, len(ytr), a.batch, torch.get_num_threads(),
           torch.__version__))
    n = len(ytr)
    for e in range(a.epochs):
        lr = opt.param_groups[0]["lr"]
        t0 = time.perf_counter()
        m.train()
        order = torch.randperm(n)
        loss_sum, right = 0.0, 0
        for i in range(0, n, a.batch):
            idx = order[i:i + a.batch]
            x, y = xtr[idx], ytr[idx]
            logits = m(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            right += (logits.argmax(1) == y).sum().item()
        secs = time.perf_counter() - t0
        if sched:
            sched.step()
        print("epoch %2d/%d  lr %.2e  loss %.4f  train acc %.4f  %6.0f "
              "images/s  %5.1f s  ~%.0f s left" % (
                  e + 1, a.epochs, lr, loss_sum / n, right / n, n / secs,
                  secs, secs * (a.epochs - e - 1)))
        sys.stdout.flush()
    print("test accuracy %.4f (eval mode, %d images)" %
          (evaluate(m, xte, yte), len(yte)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
