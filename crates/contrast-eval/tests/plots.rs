//! Plots are written as SVG and PNG from one drawing, and the PNG shows what was
//! drawn: its size, the class colours of a scatter, the curve's colour, and text.

use contrast_eval::{Series, line_plot, palette, plot_files, scatter_plot};
use std::path::PathBuf;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("contrast-eval-plots-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Pixels of `png` equal to `rgb`, and dark (text-like) pixels in its top `band` rows.
fn count(png: &std::path::Path, rgb: (u8, u8, u8), band: u32) -> (usize, usize, (u32, u32)) {
    let img = image::open(png).unwrap().to_rgb8();
    let exact = img.pixels().filter(|p| (p[0], p[1], p[2]) == rgb).count();
    let dark = img
        .enumerate_pixels()
        .filter(|(_, y, p)| *y < band && p.0.iter().all(|&c| c < 96))
        .count();
    (exact, dark, img.dimensions())
}

#[test]
fn a_scatter_map_shows_every_class_in_its_colour_with_a_title() {
    let stem = scratch("map");
    let points: Vec<(f64, f64)> = (0..300)
        .map(|i| {
            (
                (i % 3) as f64 * 10.0 + (i as f64 * 0.37).sin(),
                (i as f64).cos(),
            )
        })
        .collect();
    let classes: Vec<u32> = (0..300).map(|i| (i % 3) as u32).collect();
    let names = vec!["alpha".to_string(), "beta".into(), "gamma".into()];
    scatter_plot(&stem, "three classes", &points, Some(&classes), &names).unwrap();
    let [svg, png] = plot_files(&stem);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("three classes") && text.contains("<circle"));
    assert!(names.iter().all(|n| text.contains(n.as_str())), "legend");
    let img = image::open(&png).unwrap().to_rgb8();
    for c in 0..3 {
        let (n, dark, size) = count(&png, palette(c), 40);
        assert_eq!(size, (970, 640));
        assert!(n > 100, "class {c}: {n} pixels of its colour");
        assert!(dark > 50, "title band: {dark} dark pixels");
        // Its legend marker sits in the column right of the plot, apart from the points.
        let rgb = palette(c);
        let marker = img
            .enumerate_pixels()
            .filter(|(x, _, p)| *x >= 800 && (p[0], p[1], p[2]) == rgb)
            .count();
        assert!(marker > 20, "class {c}: {marker} legend pixels");
    }
    // A colour no class has is absent.
    assert_eq!(count(&png, palette(5), 40).0, 0);
}

#[test]
fn a_line_plot_draws_its_series_and_refuses_empty_input() {
    let stem = scratch("curve");
    let series = Series {
        name: "loss".into(),
        points: (0..20)
            .map(|i| (i as f64, 1.0 / (1.0 + i as f64)))
            .collect(),
    };
    line_plot(&stem, "a curve", "epoch", "loss", &[series]).unwrap();
    let (n, dark, size) = count(&plot_files(&stem)[1], palette(0), 40);
    assert_eq!(size, (800, 480));
    assert!(n > 300, "{n} pixels of the series colour");
    assert!(dark > 50);
    let empty = Series {
        name: "nothing".into(),
        points: vec![(0.0, f64::NAN)],
    };
    let e = line_plot(&scratch("empty"), "empty", "x", "y", &[empty]).unwrap_err();
    assert!(e.to_string().contains("no finite points"), "{e}");
    let e = scatter_plot(&stem, "t", &[(0.0, 1.0)], Some(&[0, 1]), &[]).unwrap_err();
    assert!(e.to_string().contains("1 points but 2 class labels"), "{e}");
}

#[test]
fn an_interval_plot_colours_each_row_by_its_side_of_the_reference() {
    use contrast_eval::{Interval, interval_plot};
    let row = |name: &str, low: f64, high: f64| Interval {
        name: name.into(),
        centre: 0.5 * (low + high),
        low,
        high,
    };
    let stem = scratch("intervals");
    let rows = [row("better", 0.01, 0.03), row("tie", -0.01, 0.02)];
    interval_plot(&stem, "differences", "kNN", &rows, Some(0.0)).unwrap();
    let png = &plot_files(&stem)[1];
    let (blue, dark, size) = count(png, palette(0), 40);
    assert_eq!(size, (800, 220));
    assert!(blue > 50 && dark > 50, "{blue} {dark}");
    assert!(count(png, palette(7), 0).0 > 50, "the tie is grey");
    assert_eq!(count(png, palette(3), 0).0, 0, "nothing is worse");
    let rows = [row("worse", -0.03, -0.01)];
    interval_plot(&stem, "differences", "kNN", &rows, Some(0.0)).unwrap();
    assert!(count(png, palette(3), 0).0 > 50, "the worse row is red");
}
