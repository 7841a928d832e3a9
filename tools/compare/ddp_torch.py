#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The dist workload of ag-bench in PyTorch: DistributedDataParallel with
its gloo backend, on this machine, for docs/distributed.md.

    /usr/bin/python3 tools/compare/ddp_torch.py --np 2 --steps 40

Each of NP processes (torch.multiprocessing, 1 thread each, as
`mpirun -np NP ag-bench --workload dist --threads 1`) trains the
784-512-512-10 MLP on its own random batch of 128 (cross-entropy, SGD lr
0.01, grads dropped after each step as ag-bench's sgd_step does); rank 0
prints the global samples per second, the median of --reps repetitions of
--steps steps each, timed between barriers.  Needs PyTorch; nothing in
libag's build or tests uses this script.
"""

import argparse
import os
import statistics
import time


def worker(rank, args):
    import torch
    import torch.distributed as dist
    import torch.nn as nn

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(args.port)
    dist.init_process_group("gloo", rank=rank, world_size=args.np)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(),
                          nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10))
    ddp = nn.parallel.DistributedDataParallel(model)
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.rand(args.batch, 784, generator=g) * 2 - 1
    y = torch.randint(0, 10, (args.batch,), generator=g)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        loss = loss_fn(ddp(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    rates = []
    for _ in range(args.reps):
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        dist.barrier()
        t = (time.perf_counter() - t0) / args.steps
        rates.append(args.batch * args.np / t)
    if rank == 0:
        print("torch-ddp-gloo mlp,B=%d,np=%d samples_per_s median %.0f "
              "min %.0f max %.0f" % (args.batch, args.np,
                                     statistics.median(rates), min(rates),
                                     max(rates)))
    dist.destroy_process_group()


def main():
    import torch.multiprocessing as mp

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--np", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--port", type=int, default=29517)
    args = ap.parse_args()
    mp.spawn(worker, args=(args,), nprocs=args.np, join=True)


if __name__ == "__main__":
    main()
