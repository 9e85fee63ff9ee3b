#!/usr/bin/env python3
"""PyTorch peer of `cargo xtask bench encoders`: the same SimCLR training steps on the CPU.

Models match Contrast's exactly in shape: the default ConvNet (conv3x3-BN-ReLU stages of
32, 64, 128, 256 channels, 2x2 max pool between stages, global average pool) on 28x28x1
images, and the CIFAR ResNet-18 (3x3 stem, no max pool) on 32x32x3; both with a
Linear-BN-ReLU-Linear projection head and NT-Xent, SGD with momentum.

Usage: python encoder_steps.py [--threads 2] [--runs 10] [--skip-layers] [--json out.json]
Reports the median step time, images/s (both views counted) and the transient peak
memory of one step (VmHWM after /proc/self/clear_refs minus VmRSS before). Before the
steps, the convolution layers of `cargo xtask bench encoders` at batch 512 (bias-free
Conv2d, padding k // 2), forward and forward + backward (input and weight gradients,
counted as 3x the forward FLOPs), in GFLOP/s, in both memory formats.
"""
import argparse, json, statistics, time
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(cin, cout, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))


class ConvNet(nn.Module):
    def __init__(self, channels=(32, 64, 128, 256), cin=1):
        super().__init__()
        self.stages = nn.ModuleList()
        for c in channels:
            self.stages.append(conv_bn(cin, c))
            cin = c
        self.out_dim = cin

    def forward(self, x):
        for i, s in enumerate(self.stages):
            x = F.relu(s(x))
            if i < len(self.stages) - 1:
                x = F.max_pool2d(x, 2)
        return x.mean((2, 3))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a, self.b = conv_bn(cin, cout, stride), conv_bn(cout, cout)
        self.short = nn.Sequential() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.b(F.relu(self.a(x))) + self.short(x))


class ResNet18(nn.Module):
    def __init__(self, width=64):
        super().__init__()
        self.stem = conv_bn(3, width)
        layers, cin = [], width
        for i, m in enumerate((1, 2, 4, 8)):
            layers += [Block(cin, width * m, 1 if i == 0 else 2), Block(width * m, width * m, 1)]
            cin = width * m
        self.layers = nn.Sequential(*layers)
        self.out_dim = cin

    def forward(self, x):
        return self.layers(F.relu(self.stem(x))).mean((2, 3))


def nt_xent(z, b, t):
    z = F.normalize(z, dim=1)
    logits = z @ z.t() / t
    logits.fill_diagonal_(float("-inf"))
    target = (torch.arange(2 * b) + b) % (2 * b)
    return F.cross_entropy(logits, target)


def vm(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024.0
    return 0.0


def case(name, backbone, shape, pairs, t, runs, channels_last):
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(backbone.out_dim, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 128))
    model = nn.Sequential(backbone, head).train()
    x = torch.randn(2 * pairs, *shape)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        nt_xent(model(x), pairs, t).backward()
        opt.step()

    for _ in range(2):
        step()
    before = vm("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step()
    peak = vm("VmHWM") - before
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    row = {"case": name + (" channels_last" if channels_last else ""), "median_ms": med * 1e3,
           "images_per_sec": 2 * pairs / med, "peak_extra_mb": peak}
    print(f"{row['case']:<40} {row['median_ms']:9.1f} ms {row['images_per_sec']:8.1f} img/s {peak:8.1f} MB", flush=True)
    return row


# (spatial size, in channels, out channels, kernel, stride): the default ConvNet's
# layers, then the CIFAR ResNet-18's; the same list as `cargo xtask bench encoders`.
LAYERS = [
    (28, 1, 32, 3, 1), (14, 32, 64, 3, 1), (7, 64, 128, 3, 1), (3, 128, 256, 3, 1),
    (32, 3, 64, 3, 1), (32, 64, 64, 3, 1), (32, 64, 128, 3, 2), (16, 128, 128, 3, 1),
    (32, 64, 128, 1, 2), (16, 128, 256, 3, 2), (8, 256, 256, 3, 1), (16, 128, 256, 1, 2),
    (8, 256, 512, 3, 2), (4, 512, 512, 3, 1), (8, 256, 512, 1, 2),
]


def layer(hw, cin, cout, k, s, channels_last, reps=5, batch=512):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
    x = torch.randn(batch, cin, hw, hw)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    ho = (hw + 2 * (k // 2) - k) // s + 1
    flops = 2.0 * batch * ho * ho * k * k * cin * cout
    row = {"case": f"conv {batch}x{hw}x{hw}x{cin}->{cout} k{k} s{s}",
           "layout": "channels_last" if channels_last else "nchw"}
    for path in ("fwd", "fwd+bwd"):
        def run():
            if path == "fwd":
                with torch.no_grad():
                    conv(x)
            else:
                conv.zero_grad(set_to_none=True)
                x.grad = None
                conv(x).sum().backward()
        run()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        row[path + "_ms"] = med * 1e3
        row[path + "_gflops"] = (flops if path == "fwd" else 3 * flops) / med / 1e9
    print(f"{row['case']:<36} {row['layout']:<14} fwd {row['fwd_ms']:8.1f} ms {row['fwd_gflops']:7.1f} GFLOP/s"
          f"   fwd+bwd {row['fwd+bwd_ms']:8.1f} ms {row['fwd+bwd_gflops']:7.1f} GFLOP/s", flush=True)
    return row


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--skip-layers", action="store_true")
    p.add_argument("--json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    layers = [] if a.skip_layers else [layer(*l, cl) for l in LAYERS for cl in (False, True)]
    rows = []
    for cl in (False, True):
        rows.append(case("convnet_default_b256", ConvNet(), (1, 28, 28), 256, 0.2, a.runs, cl))
        rows.append(case("resnet18_cifar_b256", ResNet18(), (3, 32, 32), 256, 0.5, max(3, a.runs // 3), cl))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": a.threads, "layers": layers, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
