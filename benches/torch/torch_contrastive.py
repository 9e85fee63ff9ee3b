#!/usr/bin/env python3
"""PyTorch-on-CPU baseline for contrastive-learning workloads.

Usage:
  python benches/torch/torch_contrastive.py [--only a,b,c,...] [--threads 2] [--json out.json]   # timing
  MALLOC_MMAP_THRESHOLD_=65536 python benches/torch/torch_contrastive.py --mem [--only ...]        # peak memory

Timing: each case is warmed up, then run >=10 times; min/median/max wall ms
(time.perf_counter) are reported.  GFLOP/s is derived from the median and the
matmul/conv FLOPs only (elementwise work is not counted).
The machine is shared: before each case the script waits (<=240 s) until other
processes use <0.15 cores; it measures the cores used by other processes during
the case (/proc/stat busy minus own CPU time) and re-runs the case (up to
--attempts) if that exceeds --retry-above, keeping the least-disturbed attempt.

Memory (--mem): after one warm-up call, /proc/self/clear_refs is written with
"5" (resets VmHWM), the case is called once, and the reported number is
VmHWM - VmRSS(before the call), i.e. the transient peak of one call on top of
already-resident inputs/parameters.  Run it with MALLOC_MMAP_THRESHOLD_=65536
so that glibc returns freed blocks >64 KiB to the OS (otherwise freed tensors
stay in the heap and the delta under-counts).
"""
import argparse
import gc
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

RESULTS = []
ARGS = None


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------
def proc_status():
    d = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                k, v = line.split(":")
                d[k] = int(v.split()[0])  # KiB
    return d


def reset_hwm():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


CLK = os.sysconf("SC_CLK_TCK")


def cpu_counters():
    """(busy_s of the whole machine, own cpu s of this process, wall s)."""
    with open("/proc/stat") as f:
        v = list(map(int, f.readline().split()[1:9]))
    busy = (sum(v) - v[3] - v[4]) / CLK  # everything but idle+iowait
    t = os.times()
    return busy, t.user + t.system, time.perf_counter()


def foreign_load(c0, c1):
    """Average number of cores used by OTHER processes between two snapshots."""
    wall = c1[2] - c0[2]
    return max(0.0, (c1[0] - c0[0]) - (c1[1] - c0[1])) / wall, (c1[1] - c0[1]) / wall


def wait_quiet(max_wait=240.0, thresh=0.15):
    """Wait until other processes use < thresh cores (1 s samples)."""
    t0 = time.perf_counter()
    while True:
        c0 = cpu_counters()
        time.sleep(1.0)
        fl, _ = foreign_load(c0, cpu_counters())
        waited = time.perf_counter() - t0
        if fl < thresh or waited > max_wait:
            return waited, fl


def timeit(fn, warmup, runs):
    for _ in range(warmup):
        fn()
    ts, fls = [], []
    for _ in range(runs):
        c0 = cpu_counters()
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
        fls.append(foreign_load(c0, cpu_counters())[0])
    return ts, fls


def peak_mem_mib(fn):
    fn()  # warm-up (lazy init, optimizer state, oneDNN caches)
    gc.collect()
    before = proc_status()["VmRSS"]
    reset_hwm()
    fn()
    after = proc_status()
    return (after["VmHWM"] - before) / 1024.0


def run_case(section, name, fn, flops=None, items=None, warmup=3, runs=10, note=""):
    if ARGS.mem:
        mib = peak_mem_mib(fn)
        r = dict(section=section, name=name, peak_mib=round(mib, 1))
        print(f"[{section}] {name:58s} peak +{mib:9.1f} MiB", flush=True)
        RESULTS.append(r)
        dump_json()
        return r
    best = None
    for attempt in range(ARGS.attempts):
        waited, fl0 = wait_quiet()
        c0 = cpu_counters()
        ts, fls = timeit(fn, warmup, runs)
        fl, own = foreign_load(c0, cpu_counters())
        if best is None or fl < best[1]:
            best = (ts, fl, own, waited, attempt, fls)
        if fl < ARGS.retry_above:
            break
        print(f"   ... {name}: other processes used {fl:.2f} cores, retrying", flush=True)
    ts, fl, own, waited, attempt, fls = best
    med = statistics.median(ts)
    r = dict(section=section, name=name, runs=runs, warmup=warmup,
             threads=torch.get_num_threads(),
             min_ms=min(ts) * 1e3, median_ms=med * 1e3, max_ms=max(ts) * 1e3,
             times_ms=[t * 1e3 for t in ts], run_foreign_cores=fls,
             foreign_cores=fl, own_cores=own,
             waited_s=waited, attempt=attempt, note=note)
    # runs >= 0.2 s during which other processes used < 0.2 cores (jiffy resolution)
    clean = [t for t, f in zip(ts, fls) if f < 0.2]
    if min(ts) >= 0.2 and clean:
        r["clean_runs"] = len(clean)
        r["clean_median_ms"] = statistics.median(clean) * 1e3
    s = (f"[{section}] {name:58s} min {r['min_ms']:10.3f}  med {r['median_ms']:10.3f}  "
         f"max {r['max_ms']:10.3f} ms  [other {fl:.2f} / own {own:.2f} cores]")
    if "clean_runs" in r:
        s += f" [clean {r['clean_runs']}/{runs} med {r['clean_median_ms']:.1f} ms]"
    if flops:
        r["gflop"] = flops / 1e9
        r["gflops_med"] = flops / med / 1e9
        r["gflops_best"] = flops / min(ts) / 1e9
        s += f"  {r['gflops_med']:8.1f} GFLOP/s (best {r['gflops_best']:.1f})"
    if items:
        r["items"] = items
        r["items_per_s_med"] = items / med
        r["items_per_s_best"] = items / min(ts)
        s += f"  {r['items_per_s_med']:8.1f} img/s (best {r['items_per_s_best']:.1f})"
    print(s, flush=True)
    RESULTS.append(r)
    dump_json()
    return r


def dump_json():
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump(dict(torch=torch.__version__, numpy=np.__version__,
                           threads=ARGS.threads, mem=ARGS.mem, results=RESULTS), f, indent=1)


# ----------------------------------------------------------------------------
# a. sgemm
# ----------------------------------------------------------------------------
def sec_a():
    shapes = [(256, 128, 65536), (4096, 128, 4096), (512, 512, 512)]
    for (M, K, N) in shapes:
        flops = 2.0 * M * N * K
        runs = 50 if flops < 1e9 else 20
        A = torch.randn(M, K)
        B = torch.randn(K, N)
        C = torch.empty(M, N)
        run_case("a", f"torch A@B   ({M}x{K})@({K}x{N})", lambda: A @ B, flops, runs=runs)
        run_case("a", f"torch mm out= ({M}x{K})@({K}x{N})",
                 lambda: torch.mm(A, B, out=C), flops, runs=runs)
        if not ARGS.mem:
            An, Bn, Cn = A.numpy(), B.numpy(), C.numpy()
            run_case("a", f"numpy(OpenBLAS) matmul out= ({M}x{K})@({K}x{N})",
                     lambda: np.matmul(An, Bn, out=Cn), flops, runs=runs)


# ----------------------------------------------------------------------------
# b. MoCo InfoNCE with a 65536 queue
# ----------------------------------------------------------------------------
def sec_b():
    Bq, D, K, T = 256, 128, 65536, 0.2
    g = torch.Generator().manual_seed(0)
    q_raw = torch.randn(Bq, D, generator=g, requires_grad=True)
    k = F.normalize(torch.randn(Bq, D, generator=g), dim=1)
    queue = F.normalize(torch.randn(K, D, generator=g), dim=1)
    target = torch.zeros(Bq, dtype=torch.long)

    def loss_fn():
        q = F.normalize(q_raw, dim=1)
        l_pos = (q * k).sum(1, keepdim=True)
        l_neg = q @ queue.T
        logits = torch.cat([l_pos, l_neg], dim=1) / T
        return F.cross_entropy(logits, target)

    def fwd_bwd():
        q_raw.grad = None
        loss_fn().backward()

    def fwd():
        with torch.no_grad():
            loss_fn()

    mm = 2.0 * Bq * K * D
    run_case("b", "MoCo InfoNCE fwd+bwd (256x128, queue 65536)", fwd_bwd, 2 * mm, runs=20)
    run_case("b", "MoCo InfoNCE fwd only (no_grad)", fwd, mm, runs=20)


# ----------------------------------------------------------------------------
# c. SimCLR NT-Xent
# ----------------------------------------------------------------------------
def ntxent(z_raw, B, T=0.5, eye=None, labels=None):
    N = 2 * B
    z = F.normalize(z_raw, dim=1)
    sim = z @ z.T / T
    if eye is None:
        eye = torch.eye(N, dtype=torch.bool, device=z.device)
    if labels is None:
        labels = (torch.arange(N, device=z.device) + B) % N
    sim = sim.masked_fill(eye, float("-inf"))
    return F.cross_entropy(sim, labels)


def sec_c():
    D = 128
    for B in (256, 512, 1024, 2048):
        N = 2 * B
        z_raw = torch.randn(N, D, requires_grad=True)
        eye = torch.eye(N, dtype=torch.bool)
        labels = (torch.arange(N) + B) % N

        def fwd_bwd():
            z_raw.grad = None
            ntxent(z_raw, B, eye=eye, labels=labels).backward()

        flops = 3 * 2.0 * N * N * D  # fwd z@z.T + 2 matmuls in backward
        run_case("c", f"NT-Xent fwd+bwd B={B} (z {N}x{D})", fwd_bwd, flops,
                 runs=20 if B <= 1024 else 10)


# ----------------------------------------------------------------------------
# d. SupCon (Khosla et al. 2020, reference SupConLoss, contrast_mode='all')
# ----------------------------------------------------------------------------
def supcon_loss(features, labels, T=0.07, base_T=0.07):
    # features: (B, V, D) normalized
    B, V = features.shape[:2]
    mask = torch.eq(labels.view(-1, 1), labels.view(1, -1)).float()
    contrast = torch.cat(torch.unbind(features, dim=1), dim=0)  # (V*B, D)
    anchor = contrast
    logits = anchor @ contrast.T / T
    logits_max, _ = logits.max(dim=1, keepdim=True)
    logits = logits - logits_max.detach()
    mask = mask.repeat(V, V)
    n = V * B
    logits_mask = torch.ones_like(mask).scatter_(1, torch.arange(n).view(-1, 1), 0)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    loss = -(T / base_T) * mean_log_prob_pos
    return loss.view(V, B).mean()


def sec_d():
    B, V, D, C = 512, 2, 128, 10
    feat_raw = torch.randn(B, V, D, requires_grad=True)
    labels = torch.randint(0, C, (B,))

    def fwd_bwd():
        feat_raw.grad = None
        supcon_loss(F.normalize(feat_raw, dim=2), labels).backward()

    N = B * V
    run_case("d", f"SupCon fwd+bwd B={B} x 2 views (N={N}), 10 classes", fwd_bwd,
             3 * 2.0 * N * N * D, runs=20)


# ----------------------------------------------------------------------------
# e. HCL hard-negative loss (Robinson et al. 2021, reference code 'hard' estimator)
# ----------------------------------------------------------------------------
def hcl_loss(out_1, out_2, neg_mask, T=0.5, tau_plus=0.1, beta=1.0):
    B = out_1.shape[0]
    out = torch.cat([out_1, out_2], dim=0)
    neg = torch.exp(torch.mm(out, out.t().contiguous()) / T)
    neg = neg.masked_select(neg_mask).view(2 * B, -1)
    pos = torch.exp(torch.sum(out_1 * out_2, dim=-1) / T)
    pos = torch.cat([pos, pos], dim=0)
    N = 2 * B - 2
    imp = (beta * neg.log()).exp()
    reweight_neg = (imp * neg).sum(dim=-1) / imp.mean(dim=-1)
    Ng = (-tau_plus * N * pos + reweight_neg) / (1 - tau_plus)
    Ng = torch.clamp(Ng, min=N * math.e ** (-1 / T))
    return (-torch.log(pos / (pos + Ng))).mean()


def sec_e():
    B, D = 512, 128
    o1 = torch.randn(B, D, requires_grad=True)
    o2 = torch.randn(B, D, requires_grad=True)
    N = 2 * B
    neg_mask = torch.ones(N, N, dtype=torch.bool)
    idx = torch.arange(B)
    neg_mask[idx, idx] = False
    neg_mask[idx + B, idx + B] = False
    neg_mask[idx, idx + B] = False
    neg_mask[idx + B, idx] = False

    def fwd_bwd():
        o1.grad = None
        o2.grad = None
        hcl_loss(F.normalize(o1, dim=1), F.normalize(o2, dim=1), neg_mask).backward()

    run_case("e", f"HCL (beta=1, tau+=0.1) fwd+bwd B={B} (N={N})", fwd_bwd,
             3 * 2.0 * N * N * D, runs=20)


# ----------------------------------------------------------------------------
# f. weighted kNN eval (InstDisc / solo-learn style)
# ----------------------------------------------------------------------------
def sec_f():
    Nb, Nq, D, C, k, T = 50000, 10000, 128, 10, 200, 0.07
    g = torch.Generator().manual_seed(1)
    bank = F.normalize(torch.randn(Nb, D, generator=g), dim=1)
    bank_labels = torch.randint(0, C, (Nb,), generator=g)
    queries = F.normalize(torch.randn(Nq, D, generator=g), dim=1)
    q_labels = torch.randint(0, C, (Nq,), generator=g)

    def knn(chunk):
        top1 = top5 = 0
        with torch.no_grad():
            for i in range(0, Nq, chunk):
                q = queries[i:i + chunk]
                c = q.shape[0]
                sim = q @ bank.T
                sim_w, idx = sim.topk(k, dim=1, largest=True, sorted=True)
                sim_labels = torch.gather(bank_labels.expand(c, -1), 1, idx)
                sim_w = (sim_w / T).exp()
                one_hot = torch.zeros(c * k, C)
                one_hot.scatter_(1, sim_labels.reshape(-1, 1), 1.0)
                scores = (one_hot.view(c, k, C) * sim_w.unsqueeze(-1)).sum(1)
                pred = scores.argsort(dim=1, descending=True)
                correct = pred.eq(q_labels[i:i + c].view(-1, 1))
                top1 += correct[:, :1].sum().item()
                top5 += correct[:, :5].sum().item()
        return top1, top5

    def mm_only(chunk):
        with torch.no_grad():
            for i in range(0, Nq, chunk):
                queries[i:i + chunk] @ bank.T

    def mm_topk(chunk):
        with torch.no_grad():
            for i in range(0, Nq, chunk):
                (queries[i:i + chunk] @ bank.T).topk(k, dim=1)

    flops = 2.0 * Nq * Nb * D
    for chunk in (100, 1000):
        run_case("f", f"kNN k=200 total, 50000 bank, 10000 q, chunk={chunk}",
                 lambda: knn(chunk), flops, warmup=1, runs=10)
        if not ARGS.mem:
            run_case("f", f"  (matmul only, chunk={chunk})", lambda: mm_only(chunk), flops,
                     warmup=1, runs=10)
            run_case("f", f"  (matmul+topk only, chunk={chunk})", lambda: mm_topk(chunk),
                     flops, warmup=1, runs=10)


# ----------------------------------------------------------------------------
# g/h. CIFAR ResNet-18 SimCLR
# ----------------------------------------------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    def __init__(self, widths=(64, 128, 256, 512)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)  # 3x3 stem, no maxpool
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(cin, w, stride), BasicBlock(w, w, 1)]
            cin = w
        self.layers = nn.Sequential(*layers)
        self.out_dim = widths[-1]

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class SimCLR(nn.Module):
    def __init__(self, widths=(64, 128, 256, 512), hidden=2048, proj=128):
        super().__init__()
        self.backbone = CifarResNet18(widths)
        self.projector = nn.Sequential(nn.Linear(self.backbone.out_dim, hidden),
                                       nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, proj))

    def forward(self, x):
        return self.projector(self.backbone(x))


def count_macs_per_image(model):
    macs = [0]
    hooks = []

    def conv_hook(m, inp, out):
        macs[0] += out.numel() // out.shape[0] * (m.in_channels // m.groups) * \
            m.kernel_size[0] * m.kernel_size[1]

    def lin_hook(m, inp, out):
        macs[0] += m.in_features * m.out_features

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    return macs[0]


def train_case(pairs, widths, channels_last=False, runs=10, warmup=2, section="g"):
    torch.manual_seed(0)
    model = SimCLR(widths)
    macs = count_macs_per_image(model)
    model.train()
    n_img = 2 * pairs
    x = torch.randn(n_img, 3, 32, 32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-6)
    eye = torch.eye(n_img, dtype=torch.bool)
    labels = (torch.arange(n_img) + pairs) % n_img

    def step():
        opt.zero_grad(set_to_none=True)
        z = model(x)
        loss = ntxent(z, pairs, T=0.2, eye=eye, labels=labels)
        loss.backward()
        opt.step()

    flops = 3 * 2.0 * macs * n_img  # fwd + ~2x fwd for bwd
    cl = ", channels_last" if channels_last else ""
    run_case(section, f"SimCLR train step {pairs} pairs ({n_img} img), widths {widths[0]}..{widths[-1]}{cl}",
             step, flops, items=n_img, warmup=warmup, runs=runs,
             note=f"fwd MACs/img={macs/1e6:.1f}M")


def eval_case(n_img, widths, channels_last=False, runs=10, warmup=2, section="h"):
    torch.manual_seed(0)
    model = CifarResNet18(widths)
    macs = count_macs_per_image(model)
    model.eval()
    x = torch.randn(n_img, 3, 32, 32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def fwd():
        with torch.inference_mode():
            model(x)

    cl = ", channels_last" if channels_last else ""
    run_case(section, f"ResNet-18 eval fwd (features) batch {n_img}, widths {widths[0]}..{widths[-1]}{cl}",
             fwd, 2.0 * macs * n_img, items=n_img, warmup=warmup, runs=runs,
             note=f"fwd MACs/img={macs/1e6:.1f}M")


W64 = (64, 128, 256, 512)
W32 = (32, 64, 128, 256)


def sec_g():
    train_case(256, W64)
    train_case(128, W64)
    train_case(256, W32)
    train_case(256, W64, channels_last=True)


def sec_h():
    eval_case(512, W64)
    eval_case(512, W32)
    eval_case(512, W64, channels_last=True)


# ----------------------------------------------------------------------------
# torch.compile (optional)
# ----------------------------------------------------------------------------
def sec_compile():
    import torch._dynamo  # noqa
    # NT-Xent B=1024
    B, D = 1024, 128
    N = 2 * B
    z_raw = torch.randn(N, D, requires_grad=True)
    eye = torch.eye(N, dtype=torch.bool)
    labels = (torch.arange(N) + B) % N
    cfn = torch.compile(lambda z: ntxent(z, B, eye=eye, labels=labels))
    t0 = time.perf_counter()
    z_raw.grad = None
    cfn(z_raw).backward()
    print(f"[compile] NT-Xent first call (compile) {time.perf_counter()-t0:.1f} s", flush=True)

    def fwd_bwd():
        z_raw.grad = None
        cfn(z_raw).backward()

    run_case("compile", f"torch.compile NT-Xent fwd+bwd B={B}", fwd_bwd, 3 * 2.0 * N * N * D,
             runs=20)

    # MoCo
    Bq, K = 256, 65536
    q_raw = torch.randn(Bq, D, requires_grad=True)
    k = F.normalize(torch.randn(Bq, D), dim=1)
    queue = F.normalize(torch.randn(K, D), dim=1)
    target = torch.zeros(Bq, dtype=torch.long)

    @torch.compile
    def moco(q_raw):
        q = F.normalize(q_raw, dim=1)
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], 1) / 0.2
        return F.cross_entropy(logits, target)

    t0 = time.perf_counter()
    moco(q_raw).backward()
    print(f"[compile] MoCo first call (compile) {time.perf_counter()-t0:.1f} s", flush=True)

    def moco_step():
        q_raw.grad = None
        moco(q_raw).backward()

    run_case("compile", "torch.compile MoCo InfoNCE fwd+bwd", moco_step, 4.0 * Bq * K * D, runs=20)

    # ResNet-18 eval
    model = CifarResNet18(W64).eval()
    macs = count_macs_per_image(model)
    cm = torch.compile(model)
    x = torch.randn(512, 3, 32, 32)
    t0 = time.perf_counter()
    with torch.no_grad():
        cm(x)
    print(f"[compile] ResNet-18 eval first call (compile) {time.perf_counter()-t0:.1f} s", flush=True)

    def fwd():
        with torch.no_grad():
            cm(x)

    run_case("compile", "torch.compile ResNet-18 eval fwd batch 512", fwd, 2.0 * macs * 512,
             items=512, runs=10, warmup=1)

    # ResNet-18 SimCLR train step
    torch.manual_seed(0)
    smodel = SimCLR(W64).train()
    cmodel = torch.compile(smodel)
    pairs = 256
    n_img = 512
    x = torch.randn(n_img, 3, 32, 32)
    opt = torch.optim.SGD(smodel.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-6)
    eye = torch.eye(n_img, dtype=torch.bool)
    labels = (torch.arange(n_img) + pairs) % n_img

    def step():
        opt.zero_grad(set_to_none=True)
        loss = ntxent(cmodel(x), pairs, T=0.2, eye=eye, labels=labels)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    step()
    print(f"[compile] ResNet-18 train first call (compile) {time.perf_counter()-t0:.1f} s", flush=True)
    run_case("compile", "torch.compile SimCLR train step 256 pairs (512 img)", step,
             3 * 2.0 * macs * n_img, items=n_img, runs=10, warmup=1)


SECTIONS = dict(a=sec_a, b=sec_b, c=sec_c, d=sec_d, e=sec_e, f=sec_f, g=sec_g, h=sec_h,
                compile=sec_compile)


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--only", default="a,b,c,d,e,f,g,h")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mem", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--attempts", type=int, default=3)
    p.add_argument("--retry-above", type=float, default=0.25,
                   help="re-run a case if other processes used more cores than this")
    ARGS = p.parse_args()
    torch.set_num_threads(ARGS.threads)
    print(f"torch {torch.__version__}, numpy {np.__version__}, threads {torch.get_num_threads()}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, "
          f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_')}, "
          f"load {os.getloadavg()}", flush=True)
    for s in ARGS.only.split(","):
        t0 = time.perf_counter()
        SECTIONS[s]()
        print(f"# section {s} done in {time.perf_counter()-t0:.1f} s, load {os.getloadavg()}",
              flush=True)
    dump_json()


if __name__ == "__main__":
    main()
