use contrast_kernels::conv2d::{self, ConvGeometry};
use std::time::Instant;
fn main() {
    let b = 512;
    let g = ConvGeometry {
        batch: b,
        height: 28,
        width: 28,
        in_channels: 1,
        out_channels: 32,
        kernel: 3,
        stride: 1,
        padding: 1,
    };
    let x: Vec<f32> = (0..b * 784)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
        .collect();
    let w: Vec<f32> = (0..9 * 32)
        .map(|i| ((i * 31) % 17) as f32 / 17.0 - 0.5)
        .collect();
    for _ in 0..3 {
        let t = Instant::now();
        let y = conv2d::forward(&x, &w, &g);
        let full = t.elapsed().as_secs_f64() * 1e3;
        drop(y);
        for per in [1usize, 2, 4, 8] {
            let gc = ConvGeometry { batch: per, ..g };
            let t = Instant::now();
            use rayon::prelude::*;
            let s: f32 = x
                .par_chunks(per * 784)
                .map(|xc| {
                    let y = conv2d::forward(xc, &w, &gc);
                    y[5]
                })
                .sum();
            let chunked = t.elapsed().as_secs_f64() * 1e3;
            print!("per {per}: {chunked:.2} ms ({s})  ");
        }
        println!("full {full:.2} ms");
    }
}
