//! Learning-rate schedule: linear warm-up, then cosine decay.

/// The learning rate at `step` of `total` steps: linear warm-up from `peak/warmup`
/// over `warmup` steps, then a half cosine from `peak` down to `floor`.
pub fn warmup_cosine(step: usize, total: usize, warmup: usize, peak: f64, floor: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::warmup_cosine;

    #[test]
    fn warms_up_linearly_then_decays_to_the_floor() {
        let lr = |s| warmup_cosine(s, 100, 10, 1.0, 0.1);
        assert!((lr(0) - 0.1).abs() < 1e-12);
        assert!((lr(4) - 0.5).abs() < 1e-12);
        assert!((lr(10) - 1.0).abs() < 1e-12);
        assert!((lr(55) - 0.55).abs() < 1e-12);
        assert!((lr(100) - 0.1).abs() < 1e-12);
        for s in 10..99 {
            assert!(lr(s + 1) <= lr(s) + 1e-15, "not decreasing at {s}");
        }
    }

    #[test]
    fn no_warmup_starts_at_the_peak() {
        assert!((warmup_cosine(0, 10, 0, 0.3, 0.0) - 0.3).abs() < 1e-12);
    }
}
