// Streaming InfoNCE on CUDA: the element-wise and row-wise steps between the cuBLAS
// tile products that `cuda.rs` issues. Compiled at run time by NVRTC, so the source
// includes no headers. Every kernel exists for float (`_f32`) and double (`_f64`).
//
// Tiles are row-major [B, cols] blocks of raw dot products a_i . c_j for candidate
// columns j0 .. j0 + cols. One thread block handles one anchor row of a tile.
//
// Masking rules (bits of `rules`), in the CPU kernel's order of precedence:
//   the positive column and always-kept columns stay; then the anchor itself
//   (exclude_self), a shared non-negative key, a dot product outside the row's window
//   [lo, hi], and listed columns are removed.

typedef unsigned int u32;
typedef long long i64;

#define RULE_EXCLUDE_SELF 1
#define RULE_KEYS 2
#define RULE_WINDOW 4
#define RULE_EXCLUDED 8
#define RULE_KEPT 16
#define RULE_POSITIVE_COLUMN 32

#define THREADS 256

__device__ __forceinline__ float neg_inf(float) { return __int_as_float(0xff800000); }
__device__ __forceinline__ double neg_inf(double) { return __longlong_as_double(0xfff0000000000000LL); }
__device__ __forceinline__ float ex(float x) { return expf(x); }
__device__ __forceinline__ double ex(double x) { return exp(x); }
__device__ __forceinline__ float mx(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double mx(double a, double b) { return fmax(a, b); }
__device__ __forceinline__ float ln(float x) { return logf(x); }
__device__ __forceinline__ double ln(double x) { return log(x); }

// Whether sorted list `i` of a CSR list set (offsets [B + 1], columns) holds `j`.
__device__ bool in_list(const u32* offsets, const u32* cols, int i, u32 j) {
    u32 lo = offsets[i];
    u32 hi = offsets[i + 1];
    while (lo < hi) {
        u32 mid = lo + (hi - lo) / 2;
        u32 v = cols[mid];
        if (v == j) return true;
        if (v < j) lo = mid + 1; else hi = mid;
    }
    return false;
}

// The per-call mask inputs; arrays a rule does not use may be any valid pointer.
struct Masks {
    u32 rules;
    const int* positive;      // [B] positive column per anchor
    const i64* row_keys;      // [B]
    const i64* col_keys;      // [N]
    const float* window;      // [B, 2] (lo, hi) per anchor
    const u32* excluded_off;  // [B + 1]
    const u32* excluded_cols;
    const u32* kept_off;      // [B + 1]
    const u32* kept_cols;
};

__device__ __forceinline__ int positive_of(const Masks& mk, int i) {
    return (mk.rules & RULE_POSITIVE_COLUMN) ? mk.positive[i] : -1;
}

// Whether anchor i drops candidate j whose raw dot product is `dot`.
template <typename T>
__device__ bool removed(const Masks& mk, int i, int j, int pos, T dot) {
    if (j == pos) return false;
    if ((mk.rules & RULE_KEPT) && in_list(mk.kept_off, mk.kept_cols, i, (u32)j)) return false;
    if ((mk.rules & RULE_EXCLUDE_SELF) && i == j) return true;
    if ((mk.rules & RULE_KEYS) && mk.row_keys[i] >= 0 && mk.row_keys[i] == mk.col_keys[j]) return true;
    if ((mk.rules & RULE_WINDOW) &&
        !((double)dot >= (double)mk.window[2 * i] && (double)dot <= (double)mk.window[2 * i + 1]))
        return true;
    if ((mk.rules & RULE_EXCLUDED) && in_list(mk.excluded_off, mk.excluded_cols, i, (u32)j)) return true;
    return false;
}

// Block-wide reduction over THREADS threads with `op`; every thread gets the result.
template <typename T, typename Op>
__device__ T block_reduce(T v, T* sh, Op op) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int w = THREADS / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) sh[threadIdx.x] = op(sh[threadIdx.x], sh[threadIdx.x + w]);
        __syncthreads();
    }
    T r = sh[0];
    __syncthreads();
    return r;
}

struct MaxOp {
    template <typename T>
    __device__ T operator()(T a, T b) const { return mx(a, b); }
};

struct SumOp {
    template <typename T>
    __device__ T operator()(T a, T b) const { return a + b; }
};

// Running state before the first tile: the extra logit opens the sums when it is the
// positive, otherwise the rows start empty.
template <typename T>
__device__ void init_state(const T* extra, T* m, T* s, T* pos_logit, int b, int extra_positive) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= b) return;
    if (extra_positive) {
        m[i] = extra[i];
        s[i] = (T)1;
        pos_logit[i] = extra[i];
    } else {
        m[i] = neg_inf((T)0);
        s[i] = (T)0;
        pos_logit[i] = (T)0;
    }
}

// One tile of pass 1 for anchor row blockIdx.x: scales and masks the dot products,
// moves the running max, turns the tile into weights exp(l - m) (0 where removed) for
// the following `acc += W C` product, and records the factor the row's accumulator
// must be rescaled by first.
template <typename T>
__device__ void tile_update(T* tile, int cols, int j0, T inv_t, Masks mk, T* m, T* s,
                            T* pos_logit, T* rescale) {
    __shared__ T sh[THREADS];
    int i = blockIdx.x;
    T* row = tile + (size_t)i * cols;
    int pos = positive_of(mk, i);
    T local = neg_inf((T)0);
    for (int k = threadIdx.x; k < cols; k += THREADS) {
        int j = j0 + k;
        T v = row[k];
        T l = removed(mk, i, j, pos, v) ? neg_inf((T)0) : v * inv_t;
        row[k] = l;
        if (j == pos) pos_logit[i] = l;
        local = mx(local, l);
    }
    T old = m[i];
    T new_m = mx(old, block_reduce(local, sh, MaxOp()));
    bool empty = new_m == neg_inf((T)0);
    T part = (T)0;
    for (int k = threadIdx.x; k < cols; k += THREADS) {
        T w = empty ? (T)0 : ex(row[k] - new_m);
        row[k] = w;
        part += w;
    }
    T tile_sum = block_reduce(part, sh, SumOp());
    if (threadIdx.x == 0) {
        T r = empty ? (T)1 : ex(old - new_m);
        rescale[i] = r;
        s[i] = s[i] * r + tile_sum;
        m[i] = new_m;
    }
}

// acc[i, :] *= rescale[i] over [B, D].
template <typename T>
__device__ void scale_rows(T* acc, const T* rescale, int b, int d) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)b * d) return;
    acc[idx] *= rescale[idx / d];
}

// After the last tile, for anchor row blockIdx.x: the log-sum-exp, the row's loss, the
// anchor gradient (sum_j p_ij c_j - c_pos) / (t B) and the extra logit's gradient.
template <typename T>
__device__ void finish(const T* acc, const T* m, const T* s, const T* pos_logit,
                       const T* extra, const T* cands, const int* positive, int column_positive,
                       int d, T inv_t, T scale, T* lse, T* loss_rows, T* d_anchors,
                       T* d_extra) {
    int i = blockIdx.x;
    T l = m[i] + ln(s[i]);
    if (threadIdx.x == 0) {
        lse[i] = l;
        loss_rows[i] = l - pos_logit[i];
        d_extra[i] = column_positive ? (T)0 : (ex(extra[i] - l) - (T)1) * scale;
    }
    T norm = (T)1 / s[i];
    const T* cp = column_positive ? cands + (size_t)positive[i] * d : 0;
    for (int k = threadIdx.x; k < d; k += THREADS) {
        T g = acc[(size_t)i * d + k] * norm;
        if (cp) g -= cp[k];
        d_anchors[(size_t)i * d + k] = g * inv_t * scale;
    }
}

// out[0] = scale * sum(x[0 .. n]), one block.
template <typename T>
__device__ void sum_scaled(const T* x, int n, T scale, T* out) {
    __shared__ T sh[THREADS];
    T part = (T)0;
    for (int k = threadIdx.x; k < n; k += THREADS) part += x[k];
    T total = block_reduce(part, sh, SumOp());
    if (threadIdx.x == 0) out[0] = total * scale;
}

// Pass 2, one tile for anchor row blockIdx.x: turns dot products into
// (p_ij - [j = pos_i]) / (t B), the weights of the candidates' gradient G^T A.
template <typename T>
__device__ void candidate_weights(T* tile, int cols, int j0, T inv_t, T g_scale, const T* lse,
                                  Masks mk) {
    int i = blockIdx.x;
    T* row = tile + (size_t)i * cols;
    int pos = positive_of(mk, i);
    for (int k = threadIdx.x; k < cols; k += THREADS) {
        int j = j0 + k;
        T v = row[k];
        T p = removed(mk, i, j, pos, v) ? (T)0 : ex(v * inv_t - lse[i]);
        if (j == pos) p -= (T)1;
        row[k] = p * g_scale;
    }
}

#define MASK_PARAMS                                                                        \
    u32 rules, const int *positive, const i64 *row_keys, const i64 *col_keys,             \
        const float *window, const u32 *excluded_off, const u32 *excluded_cols,           \
        const u32 *kept_off, const u32 *kept_cols
#define MASK_VALUE                                                                         \
    Masks { rules, positive, row_keys, col_keys, window, excluded_off, excluded_cols,     \
            kept_off, kept_cols }

#define INSTANTIATE(T, SUFFIX)                                                             \
    extern "C" __global__ void init_state_##SUFFIX(const T* extra, T* m, T* s,             \
                                                   T* pos_logit, int b, int extra_positive) { \
        init_state<T>(extra, m, s, pos_logit, b, extra_positive);                          \
    }                                                                                      \
    extern "C" __global__ void tile_update_##SUFFIX(T* tile, int cols, int j0, T inv_t,    \
                                                    T* m, T* s, T* pos_logit, T* rescale,  \
                                                    MASK_PARAMS) {                         \
        tile_update<T>(tile, cols, j0, inv_t, MASK_VALUE, m, s, pos_logit, rescale);       \
    }                                                                                      \
    extern "C" __global__ void scale_rows_##SUFFIX(T* acc, const T* rescale, int b, int d) { \
        scale_rows<T>(acc, rescale, b, d);                                                 \
    }                                                                                      \
    extern "C" __global__ void finish_##SUFFIX(                                            \
        const T* acc, const T* m, const T* s, const T* pos_logit, const T* extra,          \
        const T* cands, const int* positive, int column_positive, int d, T inv_t, T scale, \
        T* lse, T* loss_rows, T* d_anchors, T* d_extra) {                                  \
        finish<T>(acc, m, s, pos_logit, extra, cands, positive, column_positive, d, inv_t, \
                  scale, lse, loss_rows, d_anchors, d_extra);                              \
    }                                                                                      \
    extern "C" __global__ void sum_scaled_##SUFFIX(const T* x, int n, T scale, T* out) {   \
        sum_scaled<T>(x, n, scale, out);                                                   \
    }                                                                                      \
    extern "C" __global__ void candidate_weights_##SUFFIX(                                 \
        T* tile, int cols, int j0, T inv_t, T g_scale, const T* lse, MASK_PARAMS) {        \
        candidate_weights<T>(tile, cols, j0, inv_t, g_scale, lse, MASK_VALUE);             \
    }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
