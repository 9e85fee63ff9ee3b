//! Run-time choice of wider vector instructions for the elementwise passes.
//!
//! Binaries are built for baseline x86-64 (SSE2), so loops the compiler vectorises
//! get 128-bit vectors. [`wide_kernel!`] defines a function whose body is compiled
//! twice, once as is and once for AVX2 + FMA, and picks the second at run time when
//! the CPU has those features. Rust never contracts `a * b + c` into an FMA on its
//! own, and the kernels vectorise across channels, which keeps every per-channel sum
//! in its order: both versions give the same results bit for bit.

/// Whether the CPU has AVX2 and FMA (the detection macro caches its answer).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// The widest vector instructions the CPU kernels dispatch to on this CPU:
/// `"AVX-512"` (the exponentials of the streaming losses), `"AVX2"` (with FMA: the
/// elementwise passes and those exponentials) or `"SSE2"` (the baseline build); off
/// x86-64, where nothing is dispatched, the architecture's name. Two machines that
/// report different levels run the same code at different speeds, so run records
/// name it beside the CPU's model.
pub fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return "AVX-512";
        }
        if has_avx2() {
            return "AVX2";
        }
        "SSE2"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH
    }
}

/// `wide_kernel! { fn name<T: Bound>(a: A, b: B) { body } }` defines `name`, which
/// runs `body` compiled for AVX2 + FMA when the CPU supports them and for the
/// baseline otherwise. The body is inlined into both versions (a closure handed to a
/// `#[target_feature]` function is not reliably inlined, and then runs unvectorised).
/// The form is fixed: one type parameter with one trait bound, plain `name: Type`
/// arguments (no patterns), no return value and no `where` clause. Helpers the body
/// calls are vectorised only if they are inlined into it (`#[inline(always)]`).
macro_rules! wide_kernel {
    ($(#[$meta:meta])* fn $name:ident<$t:ident: $bound:ident>($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        fn $name<$t: $bound>($($arg: $ty),*) {
            #[inline(always)]
            fn body<$t: $bound>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<$t: $bound>($($arg: $ty),*) {
                    body($($arg),*)
                }
                if $crate::cpu::wide::has_avx2() {
                    // SAFETY: the CPU supports the features `avx2` is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use wide_kernel;
