// Every candidate rule applied to one tile of dot products (see mask_tile.rs, whose CPU
// implementation this mirrors rule for rule). Compiled at run time by the Metal driver.
//
// One thread per tile element: dots [rows, cols] holds a_i . c_j for candidate columns
// j0 .. j0 + cols; out gets dot / t where anchor i keeps candidate j, -inf where not.
#include <metal_stdlib>
using namespace metal;

constant uint RULE_EXCLUDE_SELF = 1;
constant uint RULE_KEYS = 2;
constant uint RULE_WINDOW = 4;
constant uint RULE_EXCLUDED = 8;
constant uint RULE_KEPT = 16;
constant uint RULE_POSITIVE_COLUMN = 32;

struct MaskParams {
    uint rows;
    uint cols;
    uint j0;
    uint rules;
    float inv_t;
};

// Whether sorted list i of a CSR list set (offsets [B + 1], columns) holds j.
static bool in_list(device const uint* offsets, device const uint* cols, uint i, uint j) {
    uint lo = offsets[i];
    uint hi = offsets[i + 1];
    while (lo < hi) {
        uint mid = lo + (hi - lo) / 2;
        uint v = cols[mid];
        if (v == j) return true;
        if (v < j) { lo = mid + 1; } else { hi = mid; }
    }
    return false;
}

kernel void mask_tile_f32(
    device const float* dots [[buffer(0)]],
    device float* out [[buffer(1)]],
    constant MaskParams& p [[buffer(2)]],
    device const int* positive [[buffer(3)]],
    device const long* row_keys [[buffer(4)]],
    device const long* col_keys [[buffer(5)]],
    device const float* window [[buffer(6)]],
    device const uint* excluded_off [[buffer(7)]],
    device const uint* excluded_cols [[buffer(8)]],
    device const uint* kept_off [[buffer(9)]],
    device const uint* kept_cols [[buffer(10)]],
    uint gid [[thread_position_in_grid]])
{
    if (gid >= p.rows * p.cols) return;
    uint i = gid / p.cols;
    uint j = p.j0 + gid % p.cols;
    float dot = dots[gid];
    int pos = (p.rules & RULE_POSITIVE_COLUMN) ? positive[i] : -1;
    bool removed;
    if ((int)j == pos) {
        removed = false;
    } else if ((p.rules & RULE_KEPT) && in_list(kept_off, kept_cols, i, j)) {
        removed = false;
    } else if ((p.rules & RULE_EXCLUDE_SELF) && i == j) {
        removed = true;
    } else if ((p.rules & RULE_KEYS) && row_keys[i] >= 0 && row_keys[i] == col_keys[j]) {
        removed = true;
    } else if ((p.rules & RULE_WINDOW) && !(dot >= window[2 * i] && dot <= window[2 * i + 1])) {
        removed = true;
    } else {
        removed = (p.rules & RULE_EXCLUDED) && in_list(excluded_off, excluded_cols, i, j);
    }
    out[gid] = removed ? -INFINITY : dot * p.inv_t;
}
