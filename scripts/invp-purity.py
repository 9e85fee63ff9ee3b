#!/usr/bin/env python3
"""Label purity of an Invariance Propagation run's memory bank, from a checkpoint.

    python3 scripts/invp-purity.py RUN/checkpoints/epoch-0012/bank.safetensors [ANCHORS]

Reads the bank's vectors [N, D] (f32), labels [N] (i64) and stored neighbour lists
[N, k] (u32) with the standard library only, and prints the share of entries that
have the anchor's class among:
- the stored k-nearest-neighbour lists (every entry);
- the propagated lists (k + k^2 + k^3 entries, duplicates kept, as the loss walks them);
- the 20 least similar of each propagated list, the invariance term's hard positives
  (2,000 random anchors; the anchor's bank vector stands in for its online view);
- the 4,096 most similar entries, the instance term's background, less the anchor
  itself (ANCHORS random anchors, 20 by default: a full pass over the bank per anchor).
The settings (3 layers, 20 positives, 4,096 background) are configs/invp-fmnist.toml's.
"""
import array
import json
import random
import struct
import sys

LAYERS, N_POS, N_BACKGROUND = 3, 20, 4096


def main():
    path = sys.argv[1]
    background_anchors = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    with open(path, "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_len))
        base = 8 + header_len

        def read(name, code):
            start, end = header[name]["data_offsets"]
            f.seek(base + start)
            values = array.array(code)
            values.frombytes(f.read(end - start))
            return values

        labels = read("labels", "q")
        vectors = read("vectors", "f")
        flat = read("neighbours", "I")
    n, d = header["vectors"]["shape"]
    k = header["neighbours"]["shape"][1]
    neighbours = [flat[i * k:(i + 1) * k] for i in range(n)]

    def row(i):
        return vectors[i * d:(i + 1) * d]

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    def propagate(i):
        found = list(neighbours[i])
        begin, end = 0, len(found)
        for _ in range(1, LAYERS):
            for p in range(begin, end):
                found.extend(neighbours[found[p]])
            begin, end = end, len(found)
        return found

    def share(pairs):
        total = agree = 0
        for anchor, entries in pairs:
            total += len(entries)
            agree += sum(labels[j] == labels[anchor] for j in entries)
        return agree / total

    print(f"bank {path}: {n} entries, {k} neighbours each")
    print(f"stored {k}-NN lists: {share((i, neighbours[i]) for i in range(n)):.4f}")
    print(f"propagated lists: {share((i, propagate(i)) for i in range(n)):.4f}")
    rng = random.Random(0)
    sample = rng.sample(range(n), 2000)

    def hard(i):
        found, v = propagate(i), row(i)
        order = sorted(range(len(found)), key=lambda p: (dot(v, row(found[p])), p))
        return [found[p] for p in order[:N_POS]]

    print(f"hard positives (2000 anchors): {share((i, hard(i)) for i in sample):.4f}")

    def background(i):
        v = row(i)
        nearest = sorted(((dot(v, row(j)), j) for j in range(n)), reverse=True)
        return [j for _, j in nearest[:N_BACKGROUND] if j != i]

    anchors = sample[:background_anchors]
    print(
        f"background ({background_anchors} anchors): "
        f"{share((i, background(i)) for i in anchors):.4f}"
    )


if __name__ == "__main__":
    main()
