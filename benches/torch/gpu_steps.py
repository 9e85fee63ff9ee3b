#!/usr/bin/env python3
"""PyTorch CUDA peer of the throughput table of `cargo xtask gpu-check`.

The same cases on the same GPU, PyTorch eager:
- SimCLR training steps at 256 pairs (both views counted in images/s): the default
  ConvNet on 28x28x1 and the CIFAR ResNet-18 on 32x32x3, the models of
  encoder_steps.py (Linear-BN-ReLU-Linear head, NT-Xent, SGD with momentum);
- the MoCo loss step, 256 queries against a 65,536 x 128 queue, forward + backward;
- NT-Xent forward + backward at B = 1024 and 4096 pairs (128-d);
- cuBLAS sgemm of each loss's product shape.

Each case is warmed up, then timed `--runs` times with torch.cuda.synchronize() after
each call; the median is reported. GFLOP/s counts the matrix products only (3 products
of the forward shape for a loss step), as the Rust table does. Peak memory is
torch.cuda.max_memory_allocated() during one call, above what was allocated before it.

Usage: python benches/torch/gpu_steps.py [--runs 10] [--json out.json]
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from encoder_steps import ConvNet, ResNet18, nt_xent


def timed(fn, runs, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_mb(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def row(case, path, fn, runs, work, per_item):
    med = timed(fn, runs)
    rate = work / med if per_item else work / med / 1e9
    r = {"case": case, "path": path, "median_ms": med * 1e3, "rate": rate, "peak_mb": peak_mb(fn)}
    unit = "img/s" if per_item else "GFLOP/s"
    print(f"{case:<32} {path:<6} {r['median_ms']:9.2f} ms {rate:10.1f} {unit:<8} {r['peak_mb']:9.1f} MB",
          flush=True)
    return r


def step_case(name, backbone, shape, pairs, t, runs):
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(backbone.out_dim, 512), nn.BatchNorm1d(512), nn.ReLU(),
                         nn.Linear(512, 128))
    model = nn.Sequential(backbone, head).cuda().train()
    x = torch.randn(2 * pairs, *shape, device="cuda")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        nt_xent(model(x), pairs, t).backward()
        opt.step()

    return row(name, "torch", step, runs, 2 * pairs, True)


def sgemm(case, m, k, n, runs):
    a = torch.randn(m, k, device="cuda")
    b = torch.randn(k, n, device="cuda")
    return row(case, "sgemm", lambda: a @ b, runs, 2.0 * m * n * k, False)


def moco(runs):
    b, k, d = 256, 65536, 128
    q = torch.randn(b, d, device="cuda", requires_grad=True)
    key = F.normalize(torch.randn(b, d, device="cuda"), dim=1)
    queue = F.normalize(torch.randn(k, d, device="cuda"), dim=1)
    target = torch.zeros(b, dtype=torch.long, device="cuda")

    def step():
        q.grad = None
        qn = F.normalize(q, dim=1)
        logits = torch.cat([(qn * key).sum(1, keepdim=True), qn @ queue.t()], 1) / 0.2
        F.cross_entropy(logits, target).backward()

    case = "moco_256x65536x128"
    return [row(case, "torch", step, runs, 3 * 2.0 * b * k * d, False), sgemm(case, b, d, k, runs)]


def simclr(b, runs):
    d, n = 128, 2 * b
    z1 = torch.randn(b, d, device="cuda", requires_grad=True)
    z2 = torch.randn(b, d, device="cuda", requires_grad=True)

    def step():
        z1.grad = z2.grad = None
        nt_xent(torch.cat([z1, z2]), b, 0.5).backward()

    case = f"simclr_b{b}"
    return [row(case, "torch", step, runs, 3 * 2.0 * n * n * d, False), sgemm(case, n, d, n, runs)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # full f32, as candle's GEMMs
    torch.backends.cudnn.allow_tf32 = False
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}", flush=True)
    rows = [
        step_case("step convnet default b256", ConvNet((32, 64, 128, 256), cin=1), (1, 28, 28), 256,
                  0.2, args.runs),
        step_case("step resnet18 cifar b256", ResNet18(64), (3, 32, 32), 256, 0.5, args.runs),
    ]
    rows += moco(args.runs)
    for b in (1024, 4096):
        rows += simclr(b, args.runs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "rows": rows},
                      f, indent=1)


if __name__ == "__main__":
    main()
