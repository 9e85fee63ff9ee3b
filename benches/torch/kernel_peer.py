#!/usr/bin/env python3
"""PyTorch peer of `cargo xtask bench kernels`: the same cases, timed the same way.

`cargo xtask bench kernels --torch PYTHON` runs this script once per case, right
after timing Contrast's paths for that case, and reads the one JSON line it prints:

  PYTHON benches/torch/kernel_peer.py --case simclr_b1024 --reps 7 --threads 2

Cases (their inputs are unit rows, as in the Rust benchmark; the values do not
matter for timing):

  moco_256x65536x128          MoCo InfoNCE forward + backward to the raw queries:
                              normalise, [positive | queue] logits / 0.2, cross-entropy
  simclr_bN                   NT-Xent forward + backward, B = N pairs, D = 128, t = 0.5:
                              normalise, z z^T / t, self masked, cross-entropy
                              (what lightly and most SimCLR code run)
  knn_10000x60000x128_top200  the 200 most similar of 60,000 bank rows for 10,000
                              queries: matmul + topk per chunk of queries, values and
                              indices (the best of chunks 100, 256 and 1000)

Timing: one warm-up call, then `reps` calls; the median wall time in ms
(time.perf_counter), as the Rust side measures. torch.set_num_threads(--threads).
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def unit_rows(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1)


def median_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), times


def moco_case():
    b, k, d, t = 256, 65536, 128, 0.2
    q_raw = unit_rows(b, d, 3).requires_grad_(True)
    key = unit_rows(b, d, 4)
    queue = unit_rows(k, d, 5)
    target = torch.zeros(b, dtype=torch.long)

    def step():
        q_raw.grad = None
        q = F.normalize(q_raw, dim=1)
        logits = torch.cat([(q * key).sum(1, keepdim=True), q @ queue.T], dim=1) / t
        F.cross_entropy(logits, target).backward()

    return step, {}


def simclr_case(b):
    d, n, t = 128, 2 * b, 0.5
    z1 = unit_rows(b, d, 6)
    z2 = unit_rows(b, d, 7)
    z_raw = torch.cat([z1, z2]).requires_grad_(True)
    eye = torch.eye(n, dtype=torch.bool)
    labels = (torch.arange(n) + b) % n

    def step():
        z_raw.grad = None
        z = F.normalize(z_raw, dim=1)
        sim = (z @ z.T / t).masked_fill(eye, float("-inf"))
        F.cross_entropy(sim, labels).backward()

    return step, {}


def knn_cases():
    q, n, d, k = 10_000, 60_000, 128, 200
    queries = unit_rows(q, d, 8)
    bank = unit_rows(n, d, 9)

    def at(chunk):
        def run():
            with torch.no_grad():
                for i in range(0, q, chunk):
                    (queries[i:i + chunk] @ bank.T).topk(k, dim=1)
        return run

    return {chunk: at(chunk) for chunk in (100, 256, 1000)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--case", required=True)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    out = {"case": a.case, "torch": torch.__version__, "threads": a.threads}
    if a.case == "moco_256x65536x128":
        fn, _ = moco_case()
        out["median_ms"], out["times_ms"] = median_ms(fn, a.reps)
    elif a.case.startswith("simclr_b"):
        fn, _ = simclr_case(int(a.case[len("simclr_b"):]))
        out["median_ms"], out["times_ms"] = median_ms(fn, a.reps)
    elif a.case == "knn_10000x60000x128_top200":
        best = None
        for chunk, fn in knn_cases().items():
            m, times = median_ms(fn, a.reps)
            if best is None or m < best[0]:
                best = (m, times, chunk)
        out["median_ms"], out["times_ms"], out["chunk"] = best
    else:
        sys.exit(f"kernel_peer.py: unknown case {a.case!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
