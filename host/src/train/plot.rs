//! PNG line charts of training curves, drawn with `plotters` in DejaVu Sans (embedded by the `dejavu`
//! crate, so nothing depends on the fonts a machine has): a title, labelled axes with rounded tick values,
//! one colour per series and a legend.

use std::{path::Path, sync::OnceLock};

use plotters::prelude::*;

/// One curve.
pub struct Series {
    pub name: String,
    pub color: [u8; 3],
    pub points: Vec<(f64, f64)>,
}

/// One chart: what it shows and the curves in it.
pub struct Figure<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    pub series: Vec<Series>,
}

const SIZE: (u32, u32) = (960, 560);
const FONT: &str = "sans-serif";

fn register_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
                .and_then(|()| plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold()))
                .map_err(|_| "the embedded DejaVu Sans font did not load".to_owned())
        })
        .clone()
}

/// The plotted range of `values`: the data's span with 5% margins, widened around a constant.
fn span(values: impl Iterator<Item = f64>, margin: bool) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi <= lo {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        return (lo - pad, hi + pad);
    }
    let pad = if margin { (hi - lo) * 0.05 } else { 0.0 };
    (lo - pad, hi + pad)
}

/// A tick value with no more digits than the tick spacing needs.
fn tick_label(value: f64, step: f64) -> String {
    if value == 0.0 {
        return "0".to_owned();
    }
    let magnitude = value.abs();
    if !(1e-3..1e6).contains(&magnitude) {
        return format!("{value:.1e}");
    }
    // One digit more than the spacing needs, trimmed: plotters may pick a spacing one step finer than `step`.
    let decimals = if step > 0.0 { (-step.log10().floor()).max(0.0) as usize + 1 } else { 3 };
    let text = format!("{value:.decimals$}");
    if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_owned() } else { text }
}

/// Draws `figure` (x: step) into a PNG at `path`.
pub fn write_png(path: &Path, figure: &Figure) -> std::io::Result<()> {
    register_font().map_err(std::io::Error::other)?;
    let finite = |s: &Series| s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect::<Vec<_>>();
    let curves: Vec<Vec<(f64, f64)>> = figure.series.iter().map(finite).collect();
    let (x0, x1) = span(curves.iter().flatten().map(|p| p.0), false);
    let (y0, y1) = span(curves.iter().flatten().map(|p| p.1), true);
    let y_ticks = 8;
    let y_step = (y1 - y0) / y_ticks as f64;
    let mut pixels = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, SIZE).into_drawing_area();
        let draw = |e: DrawingAreaErrorKind<_>| std::io::Error::other(e.to_string());
        root.fill(&WHITE).map_err(draw)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(figure.title, (FONT, 24).into_font().style(FontStyle::Bold))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(draw)?;
        let nice_step = nice(y_step);
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(figure.y_label)
            .axis_desc_style((FONT, 18))
            .label_style((FONT, 15))
            .x_labels(10)
            .y_labels(y_ticks)
            .x_label_formatter(&|x| format!("{}", x.round() as i64))
            .y_label_formatter(&|y| tick_label(*y, nice_step))
            .light_line_style(RGBColor(240, 240, 240))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(draw)?;
        for (series, points) in figure.series.iter().zip(&curves) {
            let [r, g, b] = series.color;
            let color = RGBColor(r, g, b);
            let style = ShapeStyle { color: color.to_rgba(), filled: true, stroke_width: 2 };
            let drawn = if points.len() == 1 {
                chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, style)))
            } else {
                chart.draw_series(LineSeries::new(points.iter().copied(), style))
            };
            drawn
                .map_err(draw)?
                .label(series.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], ShapeStyle { color: color.to_rgba(), filled: true, stroke_width: 3 }));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(190, 190, 190))
            .draw()
            .map_err(draw)?;
        root.present().map_err(draw)?;
    }
    let file = std::fs::File::create(path)?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), SIZE.0, SIZE.1);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
    writer.write_image_data(&pixels).map_err(std::io::Error::other)?;
    Ok(())
}

/// The 1, 2 or 5 × 10^k at or above `step`: the spacing plotters picks for its ticks, whose decimals the
/// labels need.
fn nice(step: f64) -> f64 {
    if !(step.is_finite() && step > 0.0) {
        return 1.0;
    }
    let base = 10f64.powf(step.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * base).find(|&v| v >= step * 0.999).unwrap_or(10.0 * base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_carry_the_digits_of_their_spacing() {
        assert_eq!(tick_label(0.5, 0.1), "0.5");
        assert_eq!(tick_label(1.25, 0.05), "1.25");
        assert_eq!(tick_label(40.0, 10.0), "40");
        assert_eq!(tick_label(0.0, 0.1), "0");
        assert_eq!(tick_label(2.5e-5, 1e-5), "2.5e-5");
        assert_eq!(nice(0.13), 0.2);
        assert_eq!(nice(0.07), 0.1);
        assert_eq!(nice(3.0), 5.0);
    }

    #[test]
    fn spans_pad_the_data_and_widen_a_constant() {
        assert_eq!(span([0.0, 10.0].into_iter(), false), (0.0, 10.0));
        assert_eq!(span([0.0, 10.0].into_iter(), true), (-0.5, 10.5));
        assert_eq!(span([2.0, 2.0].into_iter(), true), (1.8, 2.2));
        assert_eq!(span(std::iter::empty(), true), (0.0, 1.0));
    }
}
