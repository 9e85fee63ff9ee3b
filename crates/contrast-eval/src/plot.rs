//! Plots, each written twice from one drawing: as SVG (scalable, for reports) and as
//! PNG (for viewers and notebooks that show no SVG). Line plots of training curves,
//! spectra and histograms, and 2-D scatter maps of embeddings coloured by class.
//!
//! Text in the PNG is rasterised with DejaVu Sans, compiled in (the `dejavu` crate),
//! so a PNG looks the same on a machine without fonts; the SVG names `sans-serif`.

use crate::error::{EvalError, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One named series of `(x, y)` points.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Series and class colours (matplotlib's tab10).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The colour of series or class `i`, cycling through ten Tableau colours.
pub fn palette(i: usize) -> (u8, u8, u8) {
    let RGBColor(r, g, b) = PALETTE[i % PALETTE.len()];
    (r, g, b)
}

/// The two files a plot named `stem` writes: `stem.svg` and `stem.png`.
pub fn plot_files(stem: &Path) -> [PathBuf; 2] {
    [stem.with_extension("svg"), stem.with_extension("png")]
}

/// A drawing that can be rendered on any plotters backend.
trait Figure {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String>;
}

fn msg(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Registers the compiled-in font for plotters' text layout and rasteriser, once.
fn register_font() -> std::result::Result<(), String> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
                .map_err(|_| "the compiled-in DejaVu Sans font did not parse".to_string())
        })
        .clone()
}

/// Renders `figure` (`size` pixels) into `stem.svg` and `stem.png`.
fn render(stem: &Path, size: (u32, u32), figure: &impl Figure) -> Result<()> {
    let [svg, png] = plot_files(stem);
    let fail = |path: &Path, message: String| EvalError::Plot {
        path: path.display().to_string(),
        message,
    };
    register_font().map_err(|m| fail(&svg, m))?;
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        figure
            .draw(&root)
            .and_then(|()| root.present().map_err(msg))
            .map_err(|m| fail(&svg, m))?;
    }
    let mut pixels = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
        figure
            .draw(&root)
            .and_then(|()| root.present().map_err(msg))
            .map_err(|m| fail(&png, m))?;
    }
    image::save_buffer(
        &png,
        &pixels,
        size.0,
        size.1,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| fail(&png, e.to_string()))
}

/// The range of `values` (finite ones) widened by `pad` of its width on each side,
/// and by at least `min_pad`; `None` when no value is finite.
fn padded_range(values: impl Iterator<Item = f64>, pad: f64, min_pad: f64) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        return None;
    }
    let pad = ((hi - lo) * pad).max(min_pad);
    Some((lo - pad, hi + pad))
}

struct LineFigure<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    series: &'a [Series],
    x: (f64, f64),
    y: (f64, f64),
}

impl Figure for LineFigure<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String> {
        root.fill(&WHITE).map_err(msg)?;
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(self.x.0..self.x.1, self.y.0..self.y.1)
            .map_err(msg)?;
        chart
            .configure_mesh()
            .x_desc(self.x_label)
            .y_desc(self.y_label)
            .draw()
            .map_err(msg)?;
        for (i, s) in self.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(msg)?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(msg)
    }
}

/// Draws `series` against a shared x axis, 800x480 pixels, into `stem.svg` and
/// `stem.png` ([`plot_files`]).
pub fn line_plot(
    stem: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    let points = || series.iter().flat_map(|s| s.points.iter());
    let (x, y) = padded_range(points().map(|p| p.0), 0.0, 0.0)
        .zip(padded_range(points().map(|p| p.1), 0.05, 1e-6))
        .ok_or_else(|| EvalError::Plot {
            path: stem.display().to_string(),
            message: "no finite points to plot".into(),
        })?;
    // A single x value still gets a unit-wide axis.
    let x = if x.1 - x.0 < 1e-9 {
        (x.0, x.0 + 1.0)
    } else {
        x
    };
    let figure = LineFigure {
        title,
        x_label,
        y_label,
        series,
        x,
        y,
    };
    render(stem, (800, 480), &figure)
}

struct ScatterFigure<'a> {
    title: &'a str,
    points: &'a [(f64, f64)],
    classes: Option<&'a [u32]>,
    class_names: &'a [String],
    x: (f64, f64),
    y: (f64, f64),
}

impl Figure for ScatterFigure<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String> {
        root.fill(&WHITE).map_err(msg)?;
        // The legend gets its own column on the right, so that it covers no points.
        let (width, _) = root.dim_in_pixel();
        let (plot, legend) = root.split_horizontally(width - legend_width(self.classes));
        let mut chart = ChartBuilder::on(&plot)
            .caption(self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(self.x.0..self.x.1, self.y.0..self.y.1)
            .map_err(msg)?;
        chart
            .configure_mesh()
            .x_desc("component 1")
            .y_desc("component 2")
            .draw()
            .map_err(msg)?;
        let classes = self.classes;
        let groups = classes.map_or(1, |c| c.iter().max().map_or(1, |m| *m as usize + 1));
        for g in 0..groups {
            let colour = PALETTE[g % PALETTE.len()];
            let members = self
                .points
                .iter()
                .enumerate()
                .filter(|(i, p)| {
                    p.0.is_finite()
                        && p.1.is_finite()
                        && classes.is_none_or(|c| c[*i] as usize == g)
                })
                .map(|(_, &p)| Circle::new(p, 2, colour.filled()));
            chart.draw_series(members).map_err(msg)?;
            if classes.is_some() {
                let name = self
                    .class_names
                    .get(g)
                    .cloned()
                    .unwrap_or_else(|| format!("class {g}"));
                let y = 60 + 22 * g as i32;
                legend
                    .draw(&Circle::new((12, y), 5, colour.filled()))
                    .map_err(msg)?;
                legend
                    .draw(&Text::new(
                        name,
                        (24, y - 8),
                        ("sans-serif", 15).into_font().color(&BLACK),
                    ))
                    .map_err(msg)?;
            }
        }
        Ok(())
    }
}

/// Pixels of a scatter plot's legend column: 170 when it has classes to name.
fn legend_width(classes: Option<&[u32]>) -> u32 {
    if classes.is_some() { 170 } else { 0 }
}

/// A 2-D scatter of `points` coloured by their class (`None`: one colour), with the
/// class names in a legend column to its right, 970x640 pixels, into `stem.svg` and `stem.png`
/// ([`plot_files`]). `classes`, when given, has one entry per point.
pub fn scatter_plot(
    stem: &Path,
    title: &str,
    points: &[(f64, f64)],
    classes: Option<&[u32]>,
    class_names: &[String],
) -> Result<()> {
    let fail = |message: String| EvalError::Plot {
        path: stem.display().to_string(),
        message,
    };
    if let Some(c) = classes
        && c.len() != points.len()
    {
        return Err(fail(format!(
            "{} points but {} class labels",
            points.len(),
            c.len()
        )));
    }
    let (x, y) = padded_range(points.iter().map(|p| p.0), 0.05, 1e-6)
        .zip(padded_range(points.iter().map(|p| p.1), 0.05, 1e-6))
        .ok_or_else(|| fail("no finite points to plot".into()))?;
    let figure = ScatterFigure {
        title,
        points,
        classes,
        class_names,
        x,
        y,
    };
    render(stem, (800 + legend_width(classes), 640), &figure)
}

/// One row of an [`interval_plot`]: a name, a centre and the interval around it.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    pub name: String,
    pub centre: f64,
    pub low: f64,
    pub high: f64,
}

struct IntervalFigure<'a> {
    title: &'a str,
    x_label: &'a str,
    rows: &'a [Interval],
    reference: Option<f64>,
    x: (f64, f64),
}

impl Figure for IntervalFigure<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String> {
        root.fill(&WHITE).map_err(msg)?;
        let n = self.rows.len();
        let names = |y: &f64| {
            let i = y.round();
            if (y - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                // Row 0 at the top.
                self.rows[n - 1 - i as usize].name.clone()
            } else {
                String::new()
            }
        };
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(190)
            .build_cartesian_2d(self.x.0..self.x.1, -0.6..(n as f64 - 0.4))
            .map_err(msg)?;
        chart
            .configure_mesh()
            .x_desc(self.x_label)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .y_labels(n + 1)
            .y_label_formatter(&names)
            .disable_y_mesh()
            .draw()
            .map_err(msg)?;
        if let Some(r) = self.reference {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(r, -0.6), (r, n as f64 - 0.4)],
                    BLACK.mix(0.5).stroke_width(1),
                )))
                .map_err(msg)?;
        }
        for (i, row) in self.rows.iter().enumerate() {
            let y = (n - 1 - i) as f64;
            // Above, below or around the reference: blue, red, grey.
            let colour = match self.reference {
                Some(r) if row.low > r => PALETTE[0],
                Some(r) if row.high < r => PALETTE[3],
                Some(_) => PALETTE[7],
                None => PALETTE[0],
            };
            chart
                .draw_series([
                    PathElement::new(vec![(row.low, y), (row.high, y)], colour.stroke_width(3)),
                    PathElement::new(
                        vec![(row.low, y - 0.15), (row.low, y + 0.15)],
                        colour.stroke_width(2),
                    ),
                    PathElement::new(
                        vec![(row.high, y - 0.15), (row.high, y + 0.15)],
                        colour.stroke_width(2),
                    ),
                ])
                .map_err(msg)?;
            chart
                .draw_series(std::iter::once(Circle::new(
                    (row.centre, y),
                    5,
                    colour.filled(),
                )))
                .map_err(msg)?;
        }
        Ok(())
    }
}

/// One row per entry, top to bottom: a dot at its centre and a bar over its
/// interval, with a vertical line at `reference` (e.g. 0 for differences). A bar
/// wholly right of the reference is blue, wholly left red, holding it grey. 800 pixels
/// wide, 140 + 40 per row high, into `stem.svg` and `stem.png` ([`plot_files`]).
pub fn interval_plot(
    stem: &Path,
    title: &str,
    x_label: &str,
    rows: &[Interval],
    reference: Option<f64>,
) -> Result<()> {
    let values = rows
        .iter()
        .flat_map(|r| [r.low, r.centre, r.high])
        .chain(reference);
    let x = padded_range(values, 0.08, 1e-6).ok_or_else(|| EvalError::Plot {
        path: stem.display().to_string(),
        message: "no finite intervals to plot".into(),
    })?;
    let figure = IntervalFigure {
        title,
        x_label,
        rows,
        reference,
        x,
    };
    render(stem, (800, 140 + 40 * rows.len() as u32), &figure)
}
