#!/usr/bin/env python3
"""Golden reference values for the contrast-losses golden test, from PyTorch.

Usage (from the repository root; torch 2.15 on the CPU and numpy):

    python benches/torch/golden.py            # writes crates/contrast-losses/tests/golden/reference.json
    python benches/torch/golden.py --check    # recomputes and fails if the file differs

Every case follows its method's official code where one exists (a torch transcription
of the function named in the case's `source`), and the paper's formula where none does
(LooC, MoCHi). Each case is computed in float64 (the expected values) and in float32
(`loss_f32`, `grad_f32_max_abs_err`, `f32_ref_max_rel_err`: what the reference itself
reaches in float32, with the error measure of the Rust test).

Inputs are float32 values (from `torch.randn` with the seed in `params.seed`) written
as the shortest decimal of the value widened to float64, so that they parse to the
same float32 and float64. Queues, banks and negative sets are stored already
normalised and are used as given. Discrete choices (top-k, rank bands, the FNC
threshold, the debiasing clamp, the ContrastiveCrop threshold) are kept at least 1e-4
away from ties: a generator that lands closer moves to the next seed.

Two groups of cases:

* method cases: SimLAP (loss with a fixed and a learnable scale, gate penalties),
  LooC, MoCHi's mixed logits, HCL on a queue, FNC elimination with real false
  negatives, InvP's ramp and neighbour refresh, ContrastiveCrop's box;
* `f32_*` cases: ill-conditioned inputs for every loss kind (near-identical
  embeddings, a nearly collapsed batch, an active debiasing clamp). Each noise level
  is the smallest of a fixed list at which the reference's own float32 run stays
  within 3e-5 (relative, loss and gradients) of float64; the Rust float32 path must
  then stay within 1e-4.

The run is deterministic (one thread, seeded generators): rerunning it reproduces
the file byte for byte.
"""
import argparse
import json
import math
import os
import platform
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates", "contrast-losses", "tests", "golden", "reference.json")
LARGE_NUM = 1e9  # google-research/simclr and fnc mask value
GAP = 1e-4  # minimum distance of any discrete choice from a tie
TORCH_F32_BOUND = 3e-5  # f32_* cases: the reference's own float32 error bound
VERBOSE = "-v" in sys.argv
PROBE = None  # --probe: every noise level's case, kept or not


class Reject(Exception):
    """The inputs put a discrete choice within GAP of a tie: try the next seed."""


# --------------------------------------------------------------------------- inputs


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float32)


def rand(g, *shape):
    return torch.rand(*shape, generator=g, dtype=torch.float32)


def unit_rows(x):
    """Rows normalised in float64, stored as float32 (a queue or bank)."""
    return F.normalize(x.double(), dim=1).float()


def collapsed(g, rows, d, sigma, center=None):
    """Rows u + sigma * n: a nearly collapsed batch around u."""
    u = randn(g, 1, d) if center is None else center
    return (u + sigma * randn(g, rows, d)).float(), u


def normalize(x):
    return F.normalize(x, p=2, dim=1)


def min_gap(sorted_desc, cut):
    """Distance between ranks cut - 1 and cut of a descending vector (inf at the ends)."""
    if cut <= 0 or cut >= len(sorted_desc):
        return math.inf
    return float(sorted_desc[cut - 1] - sorted_desc[cut])


def require(gap):
    if not gap >= GAP:
        raise Reject()
    return gap


# ----------------------------------------------------------------- the references
# Each takes float tensors of one dtype and returns (loss, extras).


def nt_xent(z1, z2, temperature):
    """google-research/simclr objective.py add_contrastive_loss (in-batch), divided by 2:
    the mean over the 2B anchors (lightly's NTXentLoss convention)."""
    h1, h2 = normalize(z1), normalize(z2)
    b = h1.shape[0]
    labels = torch.arange(b)
    masks = torch.eye(b, dtype=h1.dtype)
    logits_aa = h1 @ h1.T / temperature - masks * LARGE_NUM
    logits_bb = h2 @ h2.T / temperature - masks * LARGE_NUM
    logits_ab = h1 @ h2.T / temperature
    logits_ba = h2 @ h1.T / temperature
    loss_a = F.cross_entropy(torch.cat([logits_ab, logits_aa], 1), labels)
    loss_b = F.cross_entropy(torch.cat([logits_ba, logits_bb], 1), labels)
    return (loss_a + loss_b) / 2, {}


def moco_info_nce(q, k, queue, temperature):
    """facebookresearch/moco moco/builder.py MoCo.forward + CrossEntropyLoss."""
    q, k = normalize(q), normalize(k)
    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", q, queue.T)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    labels = torch.zeros(logits.shape[0], dtype=torch.long)
    return F.cross_entropy(logits, labels), {}


def supcon(z1, z2, labels, temperature, base_temperature):
    """HobbitLong/SupContrast losses.py SupConLoss, contrast_mode='all'."""
    features = torch.stack([normalize(z1), normalize(z2)], dim=1)
    b, views = features.shape[:2]
    labels = labels.view(-1, 1)
    mask = torch.eq(labels, labels.T).to(features.dtype)
    contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)
    anchor_dot_contrast = contrast_feature @ contrast_feature.T / temperature
    logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
    logits = anchor_dot_contrast - logits_max.detach()
    mask = mask.repeat(views, views)
    logits_mask = 1 - torch.eye(b * views, dtype=features.dtype)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return loss.view(views, b).mean(), {}


def _dcl_one_way(a, b, temperature, weight):
    n = a.shape[0]
    off = ~torch.eye(n, dtype=torch.bool)
    sim_aa = a @ a.T / temperature
    sim_ab = a @ b.T / temperature
    positive = torch.diagonal(sim_ab)
    if weight is not None:
        positive = positive * weight
    negative = torch.cat([sim_aa[off].view(n, n - 1), sim_ab[off].view(n, n - 1)], dim=1)
    return (torch.logsumexp(negative, dim=1) - positive).mean()


def decoupled(z1, z2, temperature, sigma=None):
    """Decoupled contrastive loss (Yeh et al.) as lightly's DCLLoss / DCLWLoss: the mean of
    both directions; DCLW's weights 2 - B softmax(z1.z2 / sigma) are detached."""
    a, b = normalize(z1), normalize(z2)
    weight = None
    if sigma is not None:
        s = torch.einsum("nm,nm->n", a.detach(), b.detach()) / sigma
        weight = 2 - a.shape[0] * F.softmax(s, dim=0)
    return 0.5 * (_dcl_one_way(a, b, temperature, weight) + _dcl_one_way(b, a, temperature, weight)), {}


def _negative_mask(b):
    mask = torch.ones((b, 2 * b), dtype=torch.bool)
    for i in range(b):
        mask[i, i] = False
        mask[i, i + b] = False
    return torch.cat([mask, mask], 0)


def debiased_hcl(z1, z2, temperature, tau_plus, beta=None):
    """chingyaoc/DCL main.py train() (beta None) and joshr17/HCL image/main.py criterion()
    with estimator='hard' (beta given); the clamp at N e^(-1/t) as in both."""
    out_1, out_2 = normalize(z1), normalize(z2)
    b = out_1.shape[0]
    out = torch.cat([out_1, out_2], dim=0)
    neg = torch.exp(torch.mm(out, out.t().contiguous()) / temperature)
    neg = neg.masked_select(_negative_mask(b)).view(2 * b, -1)
    pos = torch.exp(torch.sum(out_1 * out_2, dim=-1) / temperature)
    pos = torch.cat([pos, pos], dim=0)
    n = b * 2 - 2
    if beta is None:
        ng = (-tau_plus * n * pos + neg.sum(dim=-1)) / (1 - tau_plus)
    else:
        imp = (beta * neg.log()).exp()
        reweight_neg = (imp * neg).sum(dim=-1) / imp.mean(dim=-1)
        ng = (-tau_plus * n * pos + reweight_neg) / (1 - tau_plus)
    floor = n * np.e ** (-1 / temperature)
    clamp_margin = (ng.detach() - floor).abs() / floor
    ng = torch.clamp(ng, min=floor)
    loss = (-torch.log(pos / (pos + ng))).mean()
    return loss, {"num_anchors_clamped": int((ng.detach() <= floor).sum()),
                  "_gap": float(clamp_margin.min())}


def hcl_queue(q, k, queue, temperature, tau_plus, beta):
    """joshr17/HCL criterion() (estimator='hard') with MoCo's candidates: the queue entries
    are the negatives (N = K), pos = exp(q.k / t)."""
    q, k = normalize(q), normalize(k)
    neg = torch.exp(q @ queue.T / temperature)
    pos = torch.exp(torch.sum(q * k, dim=-1) / temperature)
    n = queue.shape[0]
    imp = (beta * neg.log()).exp()
    reweight_neg = (imp * neg).sum(dim=-1) / imp.mean(dim=-1)
    ng = (-tau_plus * n * pos + reweight_neg) / (1 - tau_plus)
    floor = n * np.e ** (-1 / temperature)
    clamp_margin = (ng.detach() - floor).abs() / floor
    ng = torch.clamp(ng, min=floor)
    loss = (-torch.log(pos / (pos + ng))).mean()
    return loss, {"num_anchors_clamped": int((ng.detach() <= floor).sum()),
                  "_gap": float(clamp_margin.min())}


def ring(q, k, queue, temperature, outer, inner):
    """mhw32/contrastive-ring-public src/objectives/moco.py MoCoRing.get_loss
    (dynamic_inner, self_negative): the partition over [pos, sorted ring]."""
    q, k = normalize(q), normalize(k)
    witness_pos = torch.sum(q * k, dim=1) / temperature
    witness_partition = q @ queue.T / temperature
    kq = queue.shape[0]
    outer_size = int(outer * kq)
    inner_idx = int(inner * outer_size)
    sorted_partition, _ = torch.sort(witness_partition, dim=1, descending=True)
    ring_part = sorted_partition[:, inner_idx:outer_size]
    partition = torch.cat([witness_pos.unsqueeze(1), ring_part], dim=1)
    loss = -torch.mean(witness_pos - torch.logsumexp(partition, dim=1))
    sims = (q @ queue.T).detach()
    gap = math.inf
    for row in torch.sort(sims, dim=1, descending=True).values:
        gap = min(gap, min_gap(row, inner_idx), min_gap(row, outer_size))
    return loss, {"_gap": gap}


def fnc(views, temperature, topk, threshold, eliminate):
    """google-research/fnc objective.py add_contrastive_loss (in-batch, max aggregation,
    mask = top-k AND > threshold). Attraction (the released loss): identified false
    negatives join the positives. Elimination (the paper's other strategy): they leave
    the denominator and are not positives. L = 2/V sum over anchor views of the mean."""
    v = len(views)
    b = views[0].shape[0]
    h = [normalize(x) for x in views]
    allh = torch.cat(h, 0)
    n = v * b
    same = (torch.arange(n)[None, :] % b) == torch.arange(b)[:, None]
    with torch.no_grad():
        score = torch.stack([hv @ allh.T for hv in h]).max(0).values
        score = score.masked_fill(same, -LARGE_NUM)
        ordered = torch.sort(score, dim=1, descending=True).values
        top = torch.topk(score, topk, dim=1).indices
        topmask = torch.zeros(b, n, dtype=torch.bool).scatter(1, top, True)
        fns = topmask & (score > threshold)
        gap = min(min_gap(r, topk) for r in ordered)
        gap = min(gap, float((score[~same] - threshold).abs().min()))
    total = 0
    for a in range(v):
        logits = h[a] @ allh.T / temperature
        self_col = torch.zeros(b, n, dtype=torch.bool)
        self_col[torch.arange(b), a * b + torch.arange(b)] = True
        logits = logits.masked_fill(self_col, -LARGE_NUM)
        pos = same & ~self_col
        if eliminate:
            logits = logits.masked_fill(fns, -LARGE_NUM)
        else:
            pos = pos | fns
        lse = torch.logsumexp(logits, dim=1)
        pos_mean = torch.where(pos, logits, torch.zeros_like(logits)).sum(1) / pos.sum(1)
        total = total + (lse - pos_mean).mean()
    mask = [[int(x) for x in row] for row in fns]
    return 2.0 / v * total, {"false_negative_mask": mask,
                             "num_false_negatives": int(fns.sum()), "_gap": gap}


def _invp_propagate(neigh, point_indices, diffusion_layer):
    """InvariancePropagationLoss.propagate of the official code."""
    cur_point = 0
    matrix = neigh[point_indices]
    end_point = matrix.size(1) - 1
    layer = 2
    while layer <= diffusion_layer:
        current_nodes = matrix[:, cur_point]
        matrix = torch.cat([matrix, neigh[current_nodes]], dim=1)
        if cur_point == end_point:
            layer += 1
            end_point = matrix.size(1) - 1
        cur_point += 1
    return matrix


def invariance_propagation(z, indices, bank, neigh, temperature, n_background,
                           diffusion_layer, n_pos, lam_inv, ramp_weight,
                           exclusive=True, hard_pos=True):
    """WangFeng18/InvariancePropagation objective.py InvariancePropagationLoss.forward and
    update_nn (InvP=True), and main.py's L = L_ins + lam_inv * ramp * L_inv."""
    norm_points = normalize(z)
    dots = norm_points @ bank.T
    all_sim = torch.exp(dots / temperature)
    b = z.shape[0]
    self_sim = all_sim[list(range(b)), indices]
    background_sim, background_indices = all_sim.topk(k=n_background, dim=1, largest=True, sorted=True)
    loss_a = -(self_sim / background_sim.sum(dim=1) + 1e-7).log().mean()
    neighs = _invp_propagate(neigh, indices, diffusion_layer)
    background_exclusive_sim = background_sim.sum(dim=1) - self_sim
    pos_sim = torch.gather(all_sim, index=neighs, dim=1)
    kk = min(n_pos, pos_sim.size(1))
    hard_pos_sim, _ = pos_sim.topk(k=kk, dim=1, largest=not hard_pos, sorted=True)
    if exclusive:
        loss_b = -(hard_pos_sim.sum(dim=1) / background_exclusive_sim + 1e-7).log().mean()
    else:
        loss_b = -(hard_pos_sim.sum(dim=1) / (background_exclusive_sim + self_sim) + 1e-7).log().mean()
    # update_nn: the k + 1 nearest, the entry itself replaced by the (k+1)-th.
    k = neigh.shape[1]
    nei = background_indices[:, :k + 1]
    condition = nei == indices.unsqueeze(dim=1)
    backup = nei[:, k:k + 1].expand_as(nei)
    refreshed = torch.where(condition, backup, nei)[:, :k]
    # Gaps: the background edge, and the hard-positive edge between distinct entries
    # (duplicated neighbours tie with themselves, which changes nothing).
    d = dots.detach()
    gap = math.inf
    for i in range(b):
        gap = min(gap, min_gap(torch.sort(d[i], descending=True).values, n_background))
        ranked = sorted((float(d[i, j]) for j in neighs[i]), reverse=not hard_pos)
        if kk < len(ranked) and ranked[kk - 1] != ranked[kk]:
            gap = min(gap, abs(ranked[kk - 1] - ranked[kk]))
    loss = loss_a + lam_inv * ramp_weight * loss_b
    return loss, {
        "L_ins": loss_a,
        "L_inv": loss_b,
        "propagated_neighbors": [[int(x) for x in r] for r in neighs],
        "nearest": [[int(x) for x in r] for r in nei],
        "refreshed_neighbors": [[int(x) for x in r] for r in refreshed],
        "_gap": gap,
    }


def ascl(q, k, queue, t1, t2, nn_num):
    """MrChenFeng/Adaptive-Soft-Contrastive-Learning_ICPR2022 model.py ASCL._forward_moco,
    type='ascl': soft targets from the key's queue distribution (no gradient)."""
    q, k = normalize(q), normalize(k)
    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", q, queue.T)
    logits = torch.cat([l_pos, l_neg], dim=1) / t1
    with torch.no_grad():
        logits_kd = k.detach() @ queue.T / t2
        log_p = F.log_softmax(logits_kd, dim=1)
        p = log_p.exp()
        entropy = -(p * log_p).sum(1, keepdim=True)
        c = 1 - entropy / np.log(p.size(1))
        soft = torch.clamp(nn_num * c * p, max=1)
        y = torch.cat([torch.ones_like(soft[:, :1]), soft], dim=1)
        y = y / y.sum(1, keepdim=True)
    loss = -(y * F.log_softmax(logits, dim=1)).sum(1).mean()
    return loss, {"target_positive_weight": [float(x) for x in y[:, 0]]}


def align_loss(x, y, alpha):
    """SsnL/align_uniform align_loss on normalised inputs."""
    return (normalize(x) - normalize(y)).norm(p=2, dim=1).pow(alpha).mean(), {}


def uniform_loss(x, t):
    """SsnL/align_uniform uniform_loss on normalised inputs."""
    return torch.pdist(normalize(x), p=2).pow(2).mul(-t).exp().mean().log(), {}


def simlap(z1, k2, y1, posy, gate, scale):
    """erow/FastSSL model/simlap.py SimLAP.disparate_loss + multipos_ce_loss (one process):
    logits = <z1 * g * g, k2> * scale, minus their detached row mean; positives are the
    partner class, the anchor's and the partner's classes are excluded from the negatives."""
    z1 = normalize(z1)
    k2 = normalize(k2)
    logits = (z1 * gate * gate) @ k2.T * scale
    c1_mask = y1.unsqueeze(1) == y1.unsqueeze(0)
    c2_mask = posy.unsqueeze(1) == y1.unsqueeze(0)
    class_mask = c1_mask | c2_mask
    logits = logits - logits.mean(1, keepdim=True).detach()
    score = logits.exp()
    neg = (score * (~class_mask)).sum(1, keepdim=True)
    loss = torch.sum(c2_mask * (torch.log(score + neg) - logits)) / c2_mask.sum()
    return loss, {}


def gate_penalty(g, kind):
    """The project's gate penalty (the paper's form is not in any released code): the mean
    Bernoulli entropy of the gates clamped to [1e-6, 1 - 1e-6] (how erow/FastSSL logs the
    gates' entropy), or the mean of g (1 - g)."""
    if kind == "entropy":
        p = g.clamp(1e-6, 1 - 1e-6)
        return torch.distributions.Bernoulli(probs=p).entropy().mean(), {}
    return (g * (1 - g)).mean(), {}


def looc(queries, keys, negatives, temperature):
    """LooC (Xiao et al., ICLR 2021), the paper's loss (no official code): space 0 contrasts
    the query with k_0 and the negatives; space i >= 1 with k_i, the other keys of the same
    image and the negatives; the mean over the n + 1 spaces of the batch means."""
    spaces = len(queries)
    total = 0
    for h in range(spaces):
        q = normalize(queries[h])
        cols = [(q * normalize(keys[h][h])).sum(1, keepdim=True)]
        if h > 0:
            cols += [(q * normalize(keys[h][j])).sum(1, keepdim=True) for j in range(spaces) if j != h]
        cols.append(q @ negatives[h].T)
        logits = torch.cat(cols, dim=1) / temperature
        total = total + F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long))
    return total / spaces, {}


def mochi(q, k, queue, temperature, n_hardest, pair_idx, pair_w, qmix_idx, qmix_w):
    """MoCHi (Kalantidis et al., NeurIPS 2020; no official code; the paper's formulas, as
    the unofficial davidsvy/hard-negative-mixing): per query, its N hardest queue entries
    (by q.n), s mixes normalize(a n_i + (1 - a) n_j) and s' mixes
    normalize(b q + (1 - b) n_j) with the query detached, all detached, appended to the
    MoCo logits [q.k, q.queue, q.h, q.h'] / T, cross-entropy on column 0."""
    qn, kn = normalize(q), normalize(k)
    l_pos = torch.einsum("nc,nc->n", qn, kn).unsqueeze(-1)
    l_neg = qn @ queue.T
    with torch.no_grad():
        ordered, hardest = torch.sort(l_neg, dim=1, descending=True)
        hardest = hardest[:, :n_hardest]
        gap = min(min_gap(r, n_hardest) for r in ordered)
        hard = queue[hardest]  # B x N x D
        b = q.shape[0]
        points = []
        for i in range(b):
            row = []
            for (x, y), a in zip(pair_idx[i], pair_w[i]):
                row.append(a * hard[i, x] + (1 - a) * hard[i, y])
            for j, beta in zip(qmix_idx[i], qmix_w[i]):
                row.append(beta * qn[i].detach() + (1 - beta) * hard[i, j])
            points.append(torch.stack(row))
        points = F.normalize(torch.stack(points), dim=2)
    l_syn = torch.einsum("bd,bsd->bs", qn, points)
    logits = torch.cat([l_pos, l_neg, l_syn], dim=1) / temperature
    loss = F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long))
    return loss, {
        "hardest": [[int(x) for x in r] for r in hardest],
        "logits": [[float(x) for x in r] for r in logits.detach()],
        "_gap": gap,
    }


def ccrop_box(hmap, height, width, threshold):
    """xyupeng/ContrastiveCrop DDP_simclr_ccrop.py update_box for one image: min-max
    normalise the channel-summed map, F.interpolate(bilinear) to the image size, keep
    the rows and columns whose max exceeds t: [h_min, w_min, h_max, w_max] / (H, W)."""
    hf, wf = hmap.shape
    m = hmap.reshape(1, -1)
    m = m - m.min(1, keepdim=True)[0]
    m = m / m.max(1, keepdim=True)[0]
    m = m.view(1, 1, hf, wf)
    m = F.interpolate(m, size=(height, width), mode="bilinear")
    m = m[0, 0]
    rows = m.max(1)[0]
    cols = m.max(0)[0]
    h_filter = (rows > threshold).int()
    w_filter = (cols > threshold).int()
    rows_kept = torch.nonzero(h_filter).view(-1)[[0, -1]]
    cols_kept = torch.nonzero(w_filter).view(-1)[[0, -1]]
    gap = float(torch.cat([rows, cols]).sub(threshold).abs().min())
    box = [int(rows_kept[0]) / height, int(cols_kept[0]) / width,
           int(rows_kept[1]) / height, int(cols_kept[1]) / width]
    return None, {"box": box, "_gap": gap}


# ------------------------------------------------------------ running a case


def as_json_matrix(t):
    if t.dim() == 1:
        return [float(x) for x in t]
    return [[float(x) for x in row] for row in t]


def rel_err(got, want):
    """The Rust test's measure: max |got - want| / max |want|."""
    got = torch.as_tensor(got, dtype=torch.float64).reshape(-1)
    want = torch.as_tensor(want, dtype=torch.float64).reshape(-1)
    scale = max(float(want.abs().max()), 1e-12)
    return float((got - want).abs().max()) / scale


def evaluate(fn, inputs, grads, dtype):
    """Runs fn on inputs converted to dtype; returns (loss, grads, extras)."""
    ts = {}
    for k, v in inputs.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            ts[k] = v.to(dtype).clone().requires_grad_(k in grads)
        else:
            ts[k] = v
    loss, extras = fn(ts)
    gs = {}
    if loss is not None:
        loss.backward()
        for k in grads:
            gs[k] = ts[k].grad.detach().double()
        loss = loss.detach().double()
    return loss, gs, extras


class Golden:
    def __init__(self):
        self.cases = []

    def add(self, name, kind, params, inputs, fn, grads, source):
        """inputs: name -> float32 tensor, int list or number; fn(ts) -> (loss, extras)."""
        loss64, g64, ex64 = evaluate(fn, inputs, grads, torch.float64)
        loss32, g32, ex32 = evaluate(fn, inputs, grads, torch.float32)
        for key, v in ex64.items():
            discrete = not isinstance(v, (float, torch.Tensor)) and not key.startswith("_")
            if discrete and key not in ("target_positive_weight", "logits") and ex32[key] != v:
                raise Reject()  # float32 chose differently: too close to a tie
        if "_gap" in ex64:
            require(ex64["_gap"])
        expected = {}
        f32_err = None
        if loss64 is not None:
            expected["loss"] = float(loss64)
            expected["loss_f32"] = float(loss32)
            expected["grad"] = {k: as_json_matrix(g64[k]) for k in grads}
            expected["grad_f32_max_abs_err"] = max(
                float((g32[k] - g64[k]).abs().max()) for k in grads) if grads else 0.0
            f32_err = max([rel_err(loss32, loss64)] + [rel_err(g32[k], g64[k]) for k in grads])
            expected["f32_ref_max_rel_err"] = f32_err
        for key, v in ex64.items():
            if key.startswith("_"):
                continue
            if isinstance(v, torch.Tensor):
                expected[key] = float(v.detach())
                expected[key + "_f32"] = float(ex32[key].detach())
            else:
                expected[key] = v
        if "_gap" in ex64 and math.isfinite(ex64["_gap"]):
            # The debiasing clamp's margin is relative to the clamp; the rest are cosines.
            gap_key = "min_clamp_margin" if "num_anchors_clamped" in ex64 else "min_selection_gap"
            expected[gap_key] = ex64["_gap"]
        stored = {}
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                stored[k] = as_json_matrix(v.double())
            elif isinstance(v, torch.Tensor):
                stored[k] = v.tolist()
            else:
                stored[k] = v
        case = {"name": name, "loss": kind, "params": params, "inputs": stored,
                "expected": expected, "source": source}
        return case, f32_err

    def keep(self, case):
        self.cases.append(case)


def first_valid(make, seed, tries=100):
    """Calls make(seed), make(seed + 1), ... until one does not Reject."""
    for s in range(seed, seed + tries):
        try:
            return make(s)
        except Reject:
            continue
    raise RuntimeError(f"no seed from {seed} keeps the discrete choices away from ties")


def ill_conditioned(golden, make, seed, sigmas):
    """The f32_* case at the smallest noise of `sigmas` (decreasing) whose reference
    float32 error stays within TORCH_F32_BOUND; make(seed, sigma) -> (case, f32_err)."""
    best = None
    for sigma in sigmas:
        if PROBE is not None:
            try:
                probe, _ = first_valid(lambda s: make(s, sigma), seed)
                probe["name"] += f"_noise{sigma:g}"
                PROBE.append(probe)
            except RuntimeError:
                pass
        try:
            case, err = first_valid(lambda s: make(s, sigma), seed)
        except RuntimeError:
            break  # this noise puts a discrete choice within GAP of a tie for every seed
        if VERBOSE:
            print(f"    {case['name']} noise {sigma:g}: reference float32 {err:.1e}", file=sys.stderr)
        if err is None or err > TORCH_F32_BOUND:
            break
        best = case
    if best is None:
        raise RuntimeError(f"even sigma={sigmas[0]} exceeds the float32 bound")
    golden.keep(best)


# ---------------------------------------------------------------- the cases

SRC = {
    "nt_xent": "torch transcription of google-research/simclr objective.py add_contrastive_loss "
               "(in-batch; LARGE_NUM self mask), returned as (loss_a + loss_b) / 2 = mean over the 2B anchors",
    "moco": "torch transcription of facebookresearch/moco moco/builder.py MoCo.forward "
            "(logits [q.k, q.queue] / T, label 0) + nn.CrossEntropyLoss; queue rows are constants",
    "supcon": "torch transcription of HobbitLong/SupContrast losses.py SupConLoss (contrast_mode='all') "
              "on stack([z1, z2], dim=1), scaled by temperature / base_temperature",
    "dcl": "torch transcription of lightly DCLLoss (Yeh et al.'s decoupled loss): "
           "0.5 (l(z1, z2) + l(z2, z1)), l = mean_i [logsumexp(negatives) - z1_i.z2_i / t]",
    "dclw": "torch transcription of lightly DCLWLoss: DCL with the positive weighted by "
            "w = 2 - B softmax(z1.z2 / sigma), detached",
    "debiased": "torch transcription of chingyaoc/DCL main.py train() (debiased=True, "
                "Ng clamped at N e^(-1/t), N = 2B - 2, mean over 2B anchors)",
    "hcl": "torch transcription of joshr17/HCL image/main.py criterion() estimator='hard' "
           "(imp = exp(beta log neg), reweight = sum(imp neg) / mean(imp), Ng clamped at N e^(-1/t))",
    "hcl_queue": "torch transcription of joshr17/HCL image/main.py criterion() estimator='hard' with "
                 "MoCo's candidates: neg = exp(q.queue / t) over the K queue rows (N = K), "
                 "pos = exp(q.k / t), Ng clamped at K e^(-1/t); mean over B",
    "ring": "torch transcription of mhw32/contrastive-ring-public src/objectives/moco.py "
            "MoCoRing.get_loss (dynamic_inner, self_negative): partition = logsumexp([pos, "
            "sorted_desc(q.queue / t)[inner_idx:outer_size]])",
    "fnc": "torch transcription of google-research/fnc objective.py add_contrastive_loss "
           "(in-batch, max aggregation over the anchor's views, mask = top-k AND > threshold; "
           "columns view-major; loss = 2/V sum over anchor views of the mean over images)",
    "invp": "torch transcription of WangFeng18/InvariancePropagation objective.py "
            "InvariancePropagationLoss.forward / propagate / update_nn (InvP=True) and main.py "
            "L = L_ins + lam_inv ramp L_inv; +1e-7 inside both logs; bank rows are constants",
    "ascl": "torch transcription of MrChenFeng/Adaptive-Soft-Contrastive-Learning_ICPR2022 model.py "
            "ASCL._forward_moco type='ascl' (targets from z2 under no_grad)",
    "align": "SsnL/align_uniform align_loss on F.normalize'd inputs",
    "uniform": "SsnL/align_uniform uniform_loss (torch.pdist) on F.normalize'd inputs",
    "simlap": "torch transcription of erow/FastSSL model/simlap.py SimLAP.disparate_loss + "
              "multipos_ce_loss (single process): logits = <normalize(z1) * g * g, normalize(z2)> * scale, "
              "detached row mean subtracted; positives y1_j == partner_i, negatives outside "
              "{y1_i, partner_i}; partners and gates given",
    "gate_entropy": "the project's gate penalty (not in any released SimLAP code): "
                    "torch.distributions.Bernoulli(g.clamp(1e-6, 1 - 1e-6)).entropy().mean(), "
                    "the entropy erow/FastSSL logs for its gates",
    "gate_variance": "the project's gate penalty (not in any released SimLAP code): mean(g (1 - g))",
    "looc": "the LooC paper's loss (Xiao et al., ICLR 2021; no official code): per space h, "
            "cross-entropy over [q_h.k_h, (h > 0: q_h.k_j for j != h), q_h.negatives_h] / t, "
            "mean over B, then over the n + 1 spaces",
    "mochi": "MoCHi (Kalantidis et al., NeurIPS 2020; no official code): the paper's mixing "
             "(as davidsvy/hard-negative-mixing) with the mixing draws given: per query its N hardest "
             "queue rows by q.n, h = normalize(a n_x + (1 - a) n_y), h' = normalize(b q + (1 - b) n_j) "
             "(q detached), all detached, logits [q.k, q.queue, q.h, q.h'] / T, cross-entropy on column 0",
    "ramp": "WangFeng18/InvariancePropagation objective.py BinaryRampUp(i_epoch, end) = "
            "int(i_epoch > end) and GaussianRampUp(i_epoch, end, 5) = exp(-5 max(1 - i_epoch/end, 0)^2)",
    "ccrop": "torch transcription of xyupeng/ContrastiveCrop DDP_simclr_ccrop.py update_box for one "
             "map: min-max normalise, F.interpolate(size=(H, W), mode='bilinear'), rows/columns whose "
             "max > t; box = [first row / H, first col / W, last row / H, last col / W]",
}


def method_cases(golden):
    # ---- SimLAP: fixed scale, learnable scale, arbitrary and distinct partners.
    def simlap_case(seed, b, d, classes, mode, learnable):
        g = gen(seed)
        z1, z2 = randn(g, b, d), randn(g, b, d)
        gates = torch.sigmoid(2.0 * randn(g, b, d))
        labels = torch.randint(0, classes, (b,), generator=g)
        if mode == "arbitrary":
            partners = labels[torch.randperm(b, generator=g)]
        else:
            partners = (labels + torch.randint(1, classes, (b,), generator=g)) % classes
        temperature = 0.2
        inputs = {"z1": z1, "z2": z2, "gates": gates, "labels": labels.tolist(),
                  "partners": partners.tolist()}
        grads = ["z1", "z2", "gates"]
        params = {"temperature": temperature, "learnable_scale": learnable, "pairs": mode,
                  "normalize": True, "seed": seed}
        if learnable:
            # ln(1/T) after some training steps: not exactly the starting point.
            inputs["log_scale"] = torch.tensor([math.log(1 / temperature) + 0.37], dtype=torch.float32)
            grads.append("log_scale")

            def fn(t):
                return simlap(t["z1"], t["z2"], labels, partners, t["gates"], t["log_scale"].exp())
        else:
            def fn(t):
                return simlap(t["z1"], t["z2"], labels, partners, t["gates"], 1 / temperature)
        scale = "learnable" if learnable else "fixed"
        name = f"simlap_{scale}_{mode}_b{b}_d{d}_c{classes}_t{temperature}"
        return golden.add(name, "simlap", params, inputs, fn, grads, SRC["simlap"])[0]

    golden.keep(first_valid(lambda s: simlap_case(s, 8, 6, 4, "arbitrary", False), 31001))
    golden.keep(first_valid(lambda s: simlap_case(s, 8, 6, 3, "distinct", False), 31101))
    golden.keep(first_valid(lambda s: simlap_case(s, 10, 5, 4, "arbitrary", True), 31201))

    for kind in ("entropy", "variance"):
        def gate_case(seed, kind=kind):
            g = gen(seed)
            gates = torch.sigmoid(3.0 * randn(g, 4, 6))
            # A gate fully open and one fully shut exercise the entropy's clamp.
            gates[0, 0] = 1.0
            gates[1, 1] = 0.0
            gates[2, 2] = 1e-8
            params = {"penalty": kind, "seed": seed}
            return golden.add(f"simlap_gate_penalty_{kind}_b4_d6", "simlap_gate_penalty", params,
                              {"gates": gates}, lambda t: gate_penalty(t["gates"], kind), ["gates"],
                              SRC["gate_" + kind])[0]
        golden.keep(first_valid(gate_case, 31301))

    # ---- LooC: two augmentation families (three spaces).
    def looc_case(seed):
        g = gen(seed)
        b, d, kn, spaces, temperature = 4, 6, 8, 3, 0.2
        base = randn(g, b, d)
        inputs, grads = {}, []
        for h in range(spaces):
            inputs[f"q{h}"] = (base + 0.8 * randn(g, b, d)).float()
            grads.append(f"q{h}")
        for h in range(spaces):
            for j in range(spaces):
                inputs[f"k{h}_{j}"] = (base + 0.8 * randn(g, b, d)).float()
                if h > 0 or j == 0:  # space 0 uses its k_0 only
                    grads.append(f"k{h}_{j}")
        for h in range(spaces):
            inputs[f"neg{h}"] = unit_rows(randn(g, kn, d))

        def fn(t):
            qs = [t[f"q{h}"] for h in range(spaces)]
            ks = [[t[f"k{h}_{j}"] for j in range(spaces)] for h in range(spaces)]
            ns = [t[f"neg{h}"] for h in range(spaces)]
            return looc(qs, ks, ns, temperature)
        params = {"temperature": temperature, "spaces": spaces, "normalize": True, "seed": seed}
        return golden.add(f"looc_spaces{spaces}_b{b}_d{d}_k{kn}_t{temperature}", "looc", params,
                          inputs, fn, grads, SRC["looc"])[0]
    golden.keep(first_valid(looc_case, 32001))

    # ---- HCL on a queue.
    def hcl_queue_case(seed, temperature, tau_plus, beta, b=6, d=8, kq=24):
        g = gen(seed)
        q, k = randn(g, b, d), randn(g, b, d)
        k = (q + 0.7 * k).float()
        queue = unit_rows(randn(g, kq, d))
        inputs = {"z1": q, "z2": k, "queue": queue}
        params = {"temperature": temperature, "tau_plus": tau_plus, "beta": beta, "queue_size": kq,
                  "normalize": True, "seed": seed}
        fn = lambda t: hcl_queue(t["z1"], t["z2"], t["queue"], temperature, tau_plus, beta)
        name = f"hcl_queue_b{b}_d{d}_k{kq}_t{temperature}_tp{tau_plus}_beta{beta}"
        return golden.add(name, "hcl_queue", params, inputs, fn, ["z1", "z2"], SRC["hcl_queue"])[0]
    golden.keep(first_valid(lambda s: hcl_queue_case(s, 0.2, 0.1, 1.0), 33001))
    golden.keep(first_valid(lambda s: hcl_queue_case(s, 0.5, 0.05, 0.5), 33101))
    # beta = 0 and tau+ = 0: MoCo's InfoNCE exactly (checked below against moco_info_nce).
    golden.keep(first_valid(lambda s: hcl_queue_case(s, 0.2, 0.0, 0.0), 33201))

    # ---- FNC with real false negatives (class structure), elimination and attraction.
    def fnc_case(seed, eliminate, v=3, b=6, d=8, temperature=0.1, topk=2, threshold=0.5):
        g = gen(seed)
        centers = randn(g, 3, d)
        classes = [0, 1, 2, 0, 1, 2][:b]
        views = []
        for _ in range(v):
            views.append(torch.stack([centers[c] + 0.35 * randn(g, d) for c in classes]).float())
        inputs = {f"z{i + 1}": x for i, x in enumerate(views)}
        params = {"temperature": temperature, "topk": topk, "threshold": threshold, "num_views": v,
                  "normalize": True, "seed": seed}
        kind = "fnc_elimination" if eliminate else "fnc_attraction"

        def fn(t):
            return fnc([t[f"z{i + 1}"] for i in range(v)], temperature, topk, threshold, eliminate)
        case, _ = golden.add(f"{kind}_classes_v{v}_b{b}_d{d}_t{temperature}_top{topk}_thr{threshold}",
                             kind, params, inputs, fn, list(inputs), SRC["fnc"])
        if case["expected"]["num_false_negatives"] < b:
            raise Reject()
        return case
    golden.keep(first_valid(lambda s: fnc_case(s, True), 34001))
    golden.keep(first_valid(lambda s: fnc_case(s, False), 34001))

    # ---- InvP: neighbour refresh (self first, self inside the k + 1, self absent) and ramp.
    def invp_case(seed):
        g = gen(seed)
        nb, d, b, k = 20, 8, 4, 3
        bank = unit_rows(randn(g, nb, d))
        indices = torch.tensor([2, 7, 11, 16])
        z = torch.empty(b, d)
        z[0] = bank[2] + 0.05 * randn(g, d)           # its own entry first
        z[1] = bank[7] * 0.5 + bank[3] + 0.2 * randn(g, d)  # its own entry second or third
        z[2] = randn(g, d)                            # its own entry anywhere
        z[3] = bank[16] * 0.3 + bank[5] + 0.2 * randn(g, d)
        z = z.float()
        neigh = torch.stack([torch.randperm(nb, generator=g)[:k] for _ in range(nb)])
        params = {"temperature": 0.2, "n_background": 12, "k": k, "diffusion_layer": 2, "n_pos": 5,
                  "lam_inv": 0.6, "ramp_weight": 1.0, "exclusive": True, "hard_pos": True,
                  "normalize": True, "seed": seed}
        inputs = {"z1": z, "indices": indices.tolist(), "bank": bank, "neighbors": neigh.tolist()}

        def fn(t):
            return invariance_propagation(t["z1"], indices, t["bank"], neigh, 0.2, 12, 2, 5, 0.6, 1.0)
        case, _ = golden.add(f"invariance_propagation_refresh_bank{nb}_d{d}_b{b}_k{k}", "invariance_propagation",
                             params, inputs, fn, ["z1"], SRC["invp"])
        pos = [row.index(i) if i in row else -1 for row, i in zip(case["expected"]["nearest"], indices.tolist())]
        if pos[0] != 0 or not (0 < pos[1] <= k) or pos[2] != -1:
            raise Reject()
        return case
    golden.keep(first_valid(invp_case, 35001))

    epochs = [0, 1, 10, 15, 29, 30, 31, 45]
    end = 30
    binary = [int(e > end) for e in epochs]
    gaussian = [float(np.exp(-5 * max(1 - e / end, 0) ** 2)) for e in epochs]
    golden.keep({"name": "invp_ramp_end30", "loss": "invp_ramp", "params": {"end": end},
                 "inputs": {"epochs": epochs},
                 "expected": {"binary": binary, "gaussian": gaussian}, "source": SRC["ramp"]})

    # ---- MoCHi on a queue, with the mixing draws given.
    def mochi_case(seed, b=4, d=8, kq=16, n_hardest=5, s=3, s2=2, temperature=0.2):
        g = gen(seed)
        q = randn(g, b, d)
        k = (q + 0.6 * randn(g, b, d)).float()
        queue = unit_rows(randn(g, kq, d))
        pair_idx, pair_w, qmix_idx, qmix_w = [], [], [], []
        for _ in range(b):
            pairs = []
            for _ in range(s):
                x = int(torch.randint(0, n_hardest, (1,), generator=g))
                y = int(torch.randint(0, n_hardest - 1, (1,), generator=g))
                pairs.append([x, y + (y >= x)])
            pair_idx.append(pairs)
            pair_w.append([float(v) for v in rand(g, s)])
            qmix_idx.append([int(v) for v in torch.randint(0, n_hardest, (s2,), generator=g)])
            qmix_w.append([float(v) for v in 0.5 * rand(g, s2)])
        inputs = {"z1": q, "z2": k, "queue": queue, "mix_pairs": pair_idx, "mix_weights": pair_w,
                  "query_mix_negatives": qmix_idx, "query_mix_weights": qmix_w}
        params = {"temperature": temperature, "n_hardest": n_hardest, "mixes": s, "query_mixes": s2,
                  "queue_size": kq, "normalize": True, "seed": seed}
        fn = lambda t: mochi(t["z1"], t["z2"], t["queue"], temperature, n_hardest, pair_idx, pair_w,
                             qmix_idx, qmix_w)
        name = f"mochi_queue_b{b}_d{d}_k{kq}_n{n_hardest}_s{s}_sp{s2}_t{temperature}"
        return golden.add(name, "mochi", params, inputs, fn, ["z1", "z2"], SRC["mochi"])[0]
    golden.keep(first_valid(mochi_case, 36001))

    # ---- ContrastiveCrop boxes from heat maps.
    def ccrop_case(seed, hf, wf, height, width, blobs, border=False):
        g = gen(seed)
        yy = torch.arange(hf, dtype=torch.float32)[:, None]
        xx = torch.arange(wf, dtype=torch.float32)[None, :]
        hmap = 0.05 * randn(g, hf, wf)
        for _ in range(blobs):
            cy = float(rand(g, 1)) * (hf - 1)
            cx = float(rand(g, 1)) * (wf - 1)
            if border:
                cy, cx = 0.0, float(wf - 1)
            r = 0.4 + float(rand(g, 1)) * 0.15 * min(hf, wf)
            amp = 2.0 + 3.0 * float(rand(g, 1))
            hmap = hmap + amp * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        hmap = (hmap - 1.0).float()  # channel sums can be negative
        params = {"height": height, "width": width, "threshold": 0.1, "seed": seed}
        case, _ = golden.add(f"ccrop_box_map{hf}x{wf}_img{height}x{width}_thr0.1_blobs{blobs}"
                             + ("_border" if border else ""), "ccrop_box", params,
                             {"heat_map": hmap},
                             lambda t: ccrop_box(t["heat_map"], height, width, 0.1), [], SRC["ccrop"])
        top, left, bottom, right = case["expected"]["box"]
        if (bottom - top) * (right - left) > 0.6 and not border:
            raise Reject()  # most of the image: not informative
        return case
    golden.keep(first_valid(lambda s: ccrop_case(s, 4, 4, 32, 32, 1), 37001))
    golden.keep(first_valid(lambda s: ccrop_case(s, 7, 7, 32, 32, 1), 37101))
    golden.keep(first_valid(lambda s: ccrop_case(s, 3, 5, 24, 40, 1), 37201))
    golden.keep(first_valid(lambda s: ccrop_case(s, 6, 6, 28, 28, 2), 37301))
    golden.keep(first_valid(lambda s: ccrop_case(s, 5, 5, 20, 20, 1, border=True), 37401))


SIGMAS = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3]
SHORT = {"temperature": "t", "tau_plus": "tp", "beta": "beta", "sigma": "s", "alpha": "alpha",
         "outer": "outer", "inner": "inner", "T2": "T2", "nn_num": "nn"}


def short(params):
    """A name suffix from the parameters that tell cases apart."""
    return "_".join(f"{SHORT[k]}{v}" for k, v in params.items() if k in SHORT)


def f32_cases(golden):
    """Ill-conditioned inputs for every loss kind the golden test knows."""

    def pair_views(g, mode, b, d, sigma):
        if mode == "collapsed":
            z1, u = collapsed(g, b, d, sigma)
            z2, _ = collapsed(g, b, d, sigma, center=u)
            return z1, z2, u
        z1 = randn(g, b, d)
        return z1, (z1 + sigma * randn(g, b, d)).float(), None

    def queue_for(g, mode, kq, d, u, sigma):
        if mode == "collapsed":
            return unit_rows(collapsed(g, kq, d, sigma, center=u)[0])
        return unit_rows(randn(g, kq, d))

    def mk_two_view(kind, mode, fn_of, src, extra_params, b=8, d=16):
        def make(seed, sigma):
            g = gen(seed)
            z1, z2, _ = pair_views(g, mode, b, d, sigma)
            params = dict(extra_params, normalize=True, seed=seed, conditioning=mode, noise=sigma)
            tag = short(extra_params)
            name = f"f32_{kind}_{mode}_b{b}_d{d}_{tag}"
            return golden.add(name, kind, params, {"z1": z1, "z2": z2},
                              lambda t: fn_of(t["z1"], t["z2"]), ["z1", "z2"], src)
        return make

    for mode in ("collapsed", "near_identical"):
        t = 0.1 if mode == "collapsed" else 0.5
        ill_conditioned(golden, mk_two_view("nt_xent", mode, lambda a, b, t=t: nt_xent(a, b, t), SRC["nt_xent"],
                                            {"temperature": t}), 40001, SIGMAS)
        ill_conditioned(golden, mk_two_view("decoupled", mode, lambda a, b, t=t: decoupled(a, b, t), SRC["dcl"],
                                            {"temperature": t}), 40101, SIGMAS)
        ill_conditioned(golden, mk_two_view("decoupled_weighted", mode,
                                            lambda a, b, t=t: decoupled(a, b, t, 0.5), SRC["dclw"],
                                            {"temperature": t, "sigma": 0.5}), 40201, SIGMAS)
        ill_conditioned(golden, mk_two_view("debiased", mode, lambda a, b, t=t: debiased_hcl(a, b, t, 0.1),
                                            SRC["debiased"], {"temperature": t, "tau_plus": 0.1}), 40301, SIGMAS)
        ill_conditioned(golden, mk_two_view("hcl", mode, lambda a, b, t=t: debiased_hcl(a, b, t, 0.1, 1.0),
                                            SRC["hcl"], {"temperature": t, "tau_plus": 0.1, "beta": 1.0}),
                        40401, SIGMAS)
        ill_conditioned(golden, mk_two_view("alignment", mode, lambda a, b: align_loss(a, b, 2), SRC["align"],
                                            {"alpha": 2}), 40501, SIGMAS)

    # An active clamp: near-identical positives, spread negatives, a large tau+.
    for kind, beta in (("debiased", None), ("hcl", 0.5)):
        def make(seed, sigma, kind=kind, beta=beta):
            g = gen(seed)
            b, d, t, tp = 6, 8, 0.5, 0.3
            z1 = randn(g, b, d)
            z2 = (z1 + sigma * randn(g, b, d)).float()
            params = {"temperature": t, "tau_plus": tp, "normalize": True, "seed": seed,
                      "conditioning": "clamp_active", "noise": sigma}
            if beta is not None:
                params["beta"] = beta
            case, err = golden.add(f"f32_{kind}_clamp_active_b{b}_d{d}_t{t}_tp{tp}", kind, params,
                                   {"z1": z1, "z2": z2},
                                   lambda ts: debiased_hcl(ts["z1"], ts["z2"], t, tp, beta), ["z1", "z2"],
                                   SRC[kind])
            if case["expected"]["num_anchors_clamped"] < b:
                raise Reject()
            return case, err
        ill_conditioned(golden, make, 40601 if beta is None else 40651, SIGMAS)

    # SupCon on a nearly collapsed batch (labels with repeats).
    def supcon_make(seed, sigma):
        g = gen(seed)
        b, d, t = 8, 16, 0.1
        z1, z2, _ = pair_views(g, "collapsed", b, d, sigma)
        labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3])
        params = {"temperature": t, "base_temperature": 0.07, "normalize": True, "seed": seed,
                  "conditioning": "collapsed", "noise": sigma}
        return golden.add(f"f32_supcon_collapsed_b{b}_d{d}_t{t}_bt0.07", "supcon", params,
                          {"z1": z1, "z2": z2, "labels": labels.tolist()},
                          lambda ts: supcon(ts["z1"], ts["z2"], labels, t, 0.07), ["z1", "z2"], SRC["supcon"])
    ill_conditioned(golden, supcon_make, 40701, SIGMAS)

    # Queue losses: collapsed (queries, keys and queue around one point) and near-identical.
    def queue_make(kind, mode, extra, fn_of, src, b=6, d=16, kq=24, selection=False):
        def make(seed, sigma):
            g = gen(seed)
            z1, z2, u = pair_views(g, mode, b, d, sigma)
            # Selection kinds need the ranks apart: the queue keeps a wider spread.
            qs = max(sigma, 0.1) if selection else sigma
            queue = queue_for(g, mode, kq, d, u, qs)
            params = dict(extra, queue_size=kq, normalize=True, seed=seed, conditioning=mode, noise=sigma)
            tag = short(extra)
            return golden.add(f"f32_{kind}_{mode}_b{b}_d{d}_k{kq}_{tag}", kind, params,
                              {"z1": z1, "z2": z2, "queue": queue},
                              lambda ts: fn_of(ts["z1"], ts["z2"], ts["queue"]), ["z1", "z2"], src)
        return make

    for mode in ("collapsed", "near_identical"):
        # Near-identical pairs at t = 0.2 make the loss itself tiny (e^(-1/t) scale), which no
        # float32 code resolves to 1e-4 relative: those use t = 0.5.
        t = 0.2 if mode == "collapsed" else 0.5
        ill_conditioned(golden, queue_make("moco_info_nce", mode, {"temperature": t},
                                           lambda q, k, Q: moco_info_nce(q, k, Q, t), SRC["moco"]),
                        41001, SIGMAS)
        ill_conditioned(golden, queue_make("hcl_queue", mode, {"temperature": t, "tau_plus": 0.1, "beta": 1.0},
                                           lambda q, k, Q: hcl_queue(q, k, Q, t, 0.1, 1.0), SRC["hcl_queue"]),
                        41101, SIGMAS)
        ill_conditioned(golden, queue_make("ascl", mode, {"temperature": t, "T1": t, "T2": 0.1, "nn_num": 3},
                                           lambda q, k, Q: ascl(q, k, Q, t, 0.1, 3), SRC["ascl"]),
                        41201, SIGMAS)
        kq, outer, inner = 24, 0.5, 0.25
        outer_size = int(outer * kq)
        ring_extra = {"temperature": t, "outer": outer, "inner": inner, "outer_size": outer_size,
                      "inner_idx": int(inner * outer_size)}
        ill_conditioned(golden, queue_make("ring", mode, ring_extra,
                                           lambda q, k, Q: ring(q, k, Q, t, outer, inner), SRC["ring"],
                                           selection=True),
                        41301, SIGMAS)

    # HCL on a queue with an active clamp.
    def hclq_clamp(seed, sigma):
        g = gen(seed)
        b, d, kq, t, tp = 6, 8, 16, 0.5, 0.3
        q = randn(g, b, d)
        k = (q + sigma * randn(g, b, d)).float()
        queue = unit_rows(randn(g, kq, d))
        params = {"temperature": t, "tau_plus": tp, "beta": 0.5, "queue_size": kq, "normalize": True,
                  "seed": seed, "conditioning": "clamp_active", "noise": sigma}
        case, err = golden.add(f"f32_hcl_queue_clamp_active_b{b}_d{d}_k{kq}_t{t}_tp{tp}", "hcl_queue", params,
                               {"z1": q, "z2": k, "queue": queue},
                               lambda ts: hcl_queue(ts["z1"], ts["z2"], ts["queue"], t, tp, 0.5), ["z1", "z2"],
                               SRC["hcl_queue"])
        if case["expected"]["num_anchors_clamped"] < b:
            raise Reject()
        return case, err
    ill_conditioned(golden, hclq_clamp, 41401, SIGMAS)

    # Uniformity on a nearly collapsed batch, on a finer noise grid. Seed 7 at B = 8 is
    # where torch.pdist's float32 reaches 1.4e-5 at noise 1e-2 while the Gram form
    # (2 - 2 a.b, then a plain log) is off by 2e-4: the case the issue describes.
    for b, d, seed in ((8, 16, 7), (32, 128, 42001)):
        def unif_make(seed, sigma, b=b, d=d):
            g = gen(seed)
            x, _ = collapsed(g, b, d, sigma)
            params = {"t": 2, "normalize": True, "seed": seed, "conditioning": "collapsed", "noise": sigma}
            return golden.add(f"f32_uniformity_collapsed_b{b}_d{d}_t2", "uniformity", params, {"z1": x},
                              lambda ts: uniform_loss(ts["z1"], 2), ["z1"], SRC["uniform"])
        ill_conditioned(golden, unif_make, seed, [1e-1, 5e-2, 3e-2, 2e-2, 1e-2, 5e-3, 3e-3, 2e-3, 1e-3])

    # FNC: a nearly collapsed batch (the top-k edge kept 1e-4 apart), both cancellations.
    for eliminate in (False, True):
        kind = "fnc_elimination" if eliminate else "fnc_attraction"

        def fnc_make(seed, sigma, kind=kind, eliminate=eliminate):
            g = gen(seed)
            v, b, d, t, topk, thr = 3, 5, 8, 0.2, 2, 0.3
            u = randn(g, 1, d)
            views = [collapsed(g, b, d, sigma, center=u)[0] for _ in range(v)]
            inputs = {f"z{i + 1}": x for i, x in enumerate(views)}
            params = {"temperature": t, "topk": topk, "threshold": thr, "num_views": v, "normalize": True,
                      "seed": seed, "conditioning": "collapsed", "noise": sigma}
            return golden.add(f"f32_{kind}_collapsed_v{v}_b{b}_d{d}_t{t}_top{topk}", kind, params, inputs,
                              lambda ts: fnc([ts[f"z{i + 1}"] for i in range(v)], t, topk, thr, eliminate),
                              list(inputs), SRC["fnc"])
        ill_conditioned(golden, fnc_make, 42101, SIGMAS)

    # InvP: anchors nearly on their bank entries (near-identical), and a collapsed bank.
    for mode in ("near_identical", "collapsed"):
        def invp_make(seed, sigma, mode=mode):
            g = gen(seed)
            nb, d, b, k = 20, 8, 4, 2
            if mode == "collapsed":
                bank = unit_rows(collapsed(g, nb, d, max(sigma, 0.1))[0])
            else:
                bank = unit_rows(randn(g, nb, d))
            indices = torch.tensor([1, 6, 9, 14])
            z = (bank[indices] + sigma * randn(g, b, d)).float()
            neigh = torch.stack([torch.randperm(nb, generator=g)[:k] for _ in range(nb)])
            params = {"temperature": 0.2, "n_background": 10, "k": k, "diffusion_layer": 3, "n_pos": 3,
                      "lam_inv": 0.6, "ramp_weight": 1.0, "exclusive": True, "hard_pos": True, "normalize": True,
                      "seed": seed, "conditioning": mode, "noise": sigma}
            inputs = {"z1": z, "indices": indices.tolist(), "bank": bank, "neighbors": neigh.tolist()}
            return golden.add(f"f32_invariance_propagation_{mode}_bank{nb}_d{d}_b{b}", "invariance_propagation",
                              params, inputs,
                              lambda ts: invariance_propagation(ts["z1"], indices, ts["bank"], neigh, 0.2, 10, 3, 3,
                                                                0.6, 1.0),
                              ["z1"], SRC["invp"])
        ill_conditioned(golden, invp_make, 42201, SIGMAS)

    # SimLAP: a nearly collapsed batch; gates near 0 and 1.
    def simlap_make(seed, sigma):
        g = gen(seed)
        b, d, t = 8, 12, 0.1
        z1, z2, _ = pair_views(g, "collapsed", b, d, sigma)
        gates = torch.sigmoid(2.0 * randn(g, b, d))
        labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
        partners = torch.tensor([1, 2, 3, 0, 2, 3, 0, 1])
        params = {"temperature": t, "learnable_scale": False, "pairs": "distinct", "normalize": True,
                  "seed": seed, "conditioning": "collapsed", "noise": sigma}
        return golden.add(f"f32_simlap_collapsed_b{b}_d{d}_t{t}", "simlap", params,
                          {"z1": z1, "z2": z2, "gates": gates, "labels": labels.tolist(),
                           "partners": partners.tolist()},
                          lambda ts: simlap(ts["z1"], ts["z2"], labels, partners, ts["gates"], 1 / t),
                          ["z1", "z2", "gates"], SRC["simlap"])
    ill_conditioned(golden, simlap_make, 42301, SIGMAS)

    # Gate penalties on saturated gates (within 1e-2 .. 1e-5 of 0 or 1): the penalty and
    # its gradient are small, and 1 - g must not lose them.
    for kind in ("entropy", "variance"):
        def gate_make(seed, sigma, kind=kind):
            g = gen(seed)
            b, d = 4, 8
            logit = (6.0 + 2.0 * randn(g, b, d).abs()) * torch.sign(randn(g, b, d))
            gates = torch.sigmoid(logit).float()
            params = {"penalty": kind, "seed": seed, "conditioning": "saturated"}
            return golden.add(f"f32_simlap_gate_penalty_{kind}_saturated_b{b}_d{d}", "simlap_gate_penalty",
                              params, {"gates": gates}, lambda ts: gate_penalty(ts["gates"], kind), ["gates"],
                              SRC["gate_" + kind])
        ill_conditioned(golden, gate_make, 42351, [0.0])

    # LooC: every query and key of an image nearly equal (a collapsed encoder).
    def looc_make(seed, sigma):
        g = gen(seed)
        b, d, kn, spaces, t = 4, 8, 8, 3, 0.2
        u = randn(g, 1, d)
        inputs, grads = {}, []
        for h in range(spaces):
            inputs[f"q{h}"] = collapsed(g, b, d, sigma, center=u)[0]
            grads.append(f"q{h}")
        for h in range(spaces):
            for j in range(spaces):
                inputs[f"k{h}_{j}"] = collapsed(g, b, d, sigma, center=u)[0]
                if h > 0 or j == 0:
                    grads.append(f"k{h}_{j}")
        for h in range(spaces):
            inputs[f"neg{h}"] = unit_rows(collapsed(g, kn, d, sigma, center=u)[0])

        def fn(ts):
            return looc([ts[f"q{h}"] for h in range(spaces)],
                        [[ts[f"k{h}_{j}"] for j in range(spaces)] for h in range(spaces)],
                        [ts[f"neg{h}"] for h in range(spaces)], t)
        params = {"temperature": t, "spaces": spaces, "normalize": True, "seed": seed,
                  "conditioning": "collapsed", "noise": sigma}
        return golden.add(f"f32_looc_collapsed_spaces{spaces}_b{b}_d{d}_k{kn}_t{t}", "looc", params, inputs, fn,
                          grads, SRC["looc"])
    ill_conditioned(golden, looc_make, 42401, SIGMAS)

    # MoCHi: queries, keys and queue nearly collapsed (the hardest-N edge kept apart).
    def mochi_make(seed, sigma):
        g = gen(seed)
        b, d, kq, n_hardest, s, s2, t = 4, 8, 16, 4, 2, 2, 0.2
        q, u = collapsed(g, b, d, sigma)
        k, _ = collapsed(g, b, d, sigma, center=u)
        queue = unit_rows(collapsed(g, kq, d, max(sigma, 0.1), center=u)[0])
        pair_idx = [[[0, 1], [2, 3]] for _ in range(b)]
        pair_w = [[0.25, 0.625] for _ in range(b)]
        qmix_idx = [[0, 3] for _ in range(b)]
        qmix_w = [[0.125, 0.375] for _ in range(b)]
        inputs = {"z1": q, "z2": k, "queue": queue, "mix_pairs": pair_idx, "mix_weights": pair_w,
                  "query_mix_negatives": qmix_idx, "query_mix_weights": qmix_w}
        params = {"temperature": t, "n_hardest": n_hardest, "mixes": s, "query_mixes": s2, "queue_size": kq,
                  "normalize": True, "seed": seed, "conditioning": "collapsed", "noise": sigma}
        return golden.add(f"f32_mochi_collapsed_b{b}_d{d}_k{kq}_n{n_hardest}_t{t}", "mochi", params, inputs,
                          lambda ts: mochi(ts["z1"], ts["z2"], ts["queue"], t, n_hardest, pair_idx, pair_w,
                                           qmix_idx, qmix_w),
                          ["z1", "z2"], SRC["mochi"])
    ill_conditioned(golden, mochi_make, 42501, SIGMAS)


# ------------------------------------------------------- independent checks


def cross_checks(cases):
    """Pure-Python float64 versions of the new kinds' formulas, and identities."""

    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    def lse(xs):
        m = max(xs)
        return m + math.log(sum(math.exp(x - m) for x in xs))

    checked = 0
    for c in cases:
        i, p, e = c["inputs"], c["params"], c["expected"]
        if c["loss"] == "simlap":
            scale = math.exp(i["log_scale"][0]) if p["learnable_scale"] else 1 / p["temperature"]
            y, y2 = i["labels"], i["partners"]
            b = len(y)
            total, count = 0.0, 0
            for a in range(b):
                za = unit(i["z1"][a])
                gz = [x * g * g for x, g in zip(za, i["gates"][a])]
                logits = [dot(gz, unit(i["z2"][j])) * scale for j in range(b)]
                neg = [logits[j] for j in range(b) if y[j] not in (y[a], y2[a])]
                for j in range(b):
                    if y[j] == y2[a]:
                        total += lse([logits[j]] + neg) - logits[j]
                        count += 1
            want = total / count
        elif c["loss"] == "looc":
            spaces = p["spaces"]
            b = len(i["q0"])
            total = 0.0
            for h in range(spaces):
                acc = 0.0
                for a in range(b):
                    q = unit(i[f"q{h}"][a])
                    pos = dot(q, unit(i[f"k{h}_{h}"][a])) / p["temperature"]
                    others = [dot(q, unit(i[f"k{h}_{j}"][a])) / p["temperature"]
                              for j in range(spaces) if h > 0 and j != h]
                    negs = [dot(q, n) / p["temperature"] for n in i[f"neg{h}"]]
                    acc += lse([pos] + others + negs) - pos
                total += acc / b
            want = total / spaces
        elif c["loss"] == "fnc_elimination":
            v, t = p["num_views"], p["temperature"]
            b = len(i["z1"])
            rows = [unit(r) for k in range(v) for r in i[f"z{k + 1}"]]
            mask = e["false_negative_mask"]
            total = 0.0
            for a in range(v):
                acc = 0.0
                for img in range(b):
                    r = a * b + img
                    cols = [cc for cc in range(v * b) if cc != r and not mask[img][cc]]
                    pos = [cc for cc in range(v * b) if cc != r and cc % b == img]
                    ls = {cc: dot(rows[r], rows[cc]) / t for cc in cols}
                    acc += lse(list(ls.values())) - sum(ls[cc] for cc in pos) / len(pos)
                total += acc / b
            want = 2.0 / v * total
        elif c["loss"] == "mochi":
            t = p["temperature"]
            row0 = e["logits"][0]
            q = unit(i["z1"][0])
            hard = [i["queue"][j] for j in e["hardest"][0]]
            pts = [unit([w * x + (1 - w) * yv for x, yv in zip(hard[a], hard[bb])])
                   for (a, bb), w in zip(i["mix_pairs"][0], i["mix_weights"][0])]
            pts += [unit([w * x + (1 - w) * yv for x, yv in zip(q, hard[j])])
                    for j, w in zip(i["query_mix_negatives"][0], i["query_mix_weights"][0])]
            tail = [dot(q, h) / t for h in pts]
            got = row0[len(row0) - len(tail):]
            assert max(abs(a - b) for a, b in zip(got, tail)) < 1e-12, c["name"]
            checked += 1
            continue
        else:
            continue
        assert abs(want - e["loss"]) <= 1e-10 * max(1.0, abs(want)), (c["name"], want, e["loss"])
        checked += 1
    # hcl_queue with beta = 0 and tau+ = 0 is MoCo's InfoNCE.
    c = next(c for c in cases if c["loss"] == "hcl_queue" and c["params"]["beta"] == 0.0
             and c["params"]["tau_plus"] == 0.0)
    ts = {k: torch.tensor(c["inputs"][k], dtype=torch.float64) for k in ("z1", "z2", "queue")}
    moco = float(moco_info_nce(ts["z1"], ts["z2"], ts["queue"], c["params"]["temperature"])[0])
    assert abs(moco - c["expected"]["loss"]) < 1e-12, (moco, c["expected"]["loss"])
    return checked + 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--check", action="store_true", help="fail if the file would change")
    ap.add_argument("-v", action="store_true", help="print the float32 error of every noise level tried")
    ap.add_argument("--probe", metavar="PATH",
                    help="also write every noise level tried (unfiltered) to PATH, for measuring")
    args = ap.parse_args()
    global PROBE
    if args.probe:
        PROBE = []

    golden = Golden()
    method_cases(golden)
    f32_cases(golden)
    checked = cross_checks(golden.cases)
    names = [c["name"] for c in golden.cases]
    assert len(names) == len(set(names)), "case names must be unique"

    generated_by = (f"benches/torch/golden.py; torch {torch.__version__}; numpy {np.__version__}; "
                    f"python {platform.python_version()}")
    lines = [json.dumps(c) for c in golden.cases]
    text = ('{"format": "contrast-golden/1", "generated_by": ' + json.dumps(generated_by)
            + ', "cases": [\n' + ",\n".join(lines) + "\n]}\n")
    if args.probe:
        with open(args.probe, "w") as f:
            f.write('{"format": "contrast-golden/1", "generated_by": ' + json.dumps(generated_by)
                    + ', "cases": [\n' + ",\n".join(json.dumps(c) for c in PROBE) + "\n]}\n")
    if args.check:
        with open(args.out) as f:
            if f.read() != text:
                sys.exit(f"{args.out} differs from what the script produces")
        print(f"{args.out}: up to date ({len(lines)} cases)")
        return
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {len(lines)} cases to {args.out} ({checked} cross-checked independently)")
    for c in golden.cases:
        e = c["expected"].get("f32_ref_max_rel_err")
        noise = c["params"].get("noise")
        print(f"  {c['name']}" + (f"  noise {noise:g}, torch f32 {e:.1e}" if noise is not None else ""))


if __name__ == "__main__":
    main()
