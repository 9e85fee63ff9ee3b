#!/usr/bin/env bash
# Soak test: a long MoCo training run whose resident memory is sampled every 15 s,
# stopped with SIGINT (a clean stop: checkpoint, exit 130) after MINUTES, then the
# curve is written as CSV and SVG. Outside CI; the result is in docs/performance.md.
#
#   scripts/soak.sh [MINUTES=120] [OUT=target/soak]
#
# Memory that grows with the step count (a leak in the queue, the loader, the
# checkpoints or the metrics) shows as a rising VmRSS after the first epochs; the
# allocator keeps freed pages (xtask sets mimalloc's purge delay to -1), so a
# healthy run is flat at its high-water mark.
set -euo pipefail
minutes=${1:-120}
out=${2:-target/soak}
mkdir -p "$out"
cargo build --release -p xtask --quiet
rm -rf "$out/run"
./target/release/xtask train --config configs/moco-fmnist.toml \
    --set train.epochs=10000 --out "$out/run" > "$out/train.log" 2>&1 &
pid=$!
start=$(date +%s)
echo "t_s,rss_kb,hwm_kb" > "$out/rss.csv"
while kill -0 "$pid" 2>/dev/null; do
    now=$(date +%s)
    if [ $((now - start)) -ge $((minutes * 60)) ]; then
        kill -INT "$pid"
        wait "$pid" || true
        break
    fi
    awk -v t=$((now - start)) '/VmRSS/{r=$2} /VmHWM/{h=$2} END{print t "," r "," h}' \
        "/proc/$pid/status" >> "$out/rss.csv" 2>/dev/null || true
    sleep 15
done
python3 - "$out/rss.csv" "$out/rss.svg" <<'EOF'
import sys
rows = [l.split(",") for l in open(sys.argv[1]).read().split()[1:]]
t = [int(r[0]) / 60 for r in rows]
rss = [int(r[1]) / 1024 for r in rows]
w, h, pad = 720, 320, 50
tmax, top = max(t), max(rss) * 1.1
x = lambda v: pad + (w - 2 * pad) * v / tmax
y = lambda v: h - pad - (h - 2 * pad) * v / top
pts = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in zip(t, rss))
ticks = "".join(
    f'<text x="{pad - 8}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="11">{v:.0f}</text>'
    f'<line x1="{pad}" x2="{w - pad}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>'
    for v in [top * k / 5 for k in range(6)])
xt = "".join(
    f'<text x="{x(v):.1f}" y="{h - pad + 16}" text-anchor="middle" font-size="11">{v:.0f}</text>'
    for v in [tmax * k / 6 for k in range(7)])
open(sys.argv[2], "w").write(
    f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif">'
    f'<rect width="{w}" height="{h}" fill="white"/>{ticks}{xt}'
    f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{pts}"/>'
    f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="13">MoCo soak: resident memory (MiB) over minutes</text>'
    f'<text x="{w / 2}" y="{h - 10}" text-anchor="middle" font-size="11">minutes</text></svg>')
after = [b for a, b in zip(t, rss) if a >= 10] or rss
print(f"samples {len(rss)}, peak {max(rss):.0f} MiB, "
      f"after 10 min: min {min(after):.0f}, max {max(after):.0f}, last {rss[-1]:.0f} MiB")
EOF
