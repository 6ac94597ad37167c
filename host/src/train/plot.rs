//! A PNG line chart of training curves, drawn here (no font or plotting library): axes, gridlines with their
//! values, one colour per series, a legend of colour swatches and names in a small built-in pixel font.

use std::path::Path;

/// One curve.
pub struct Series {
    pub name: String,
    pub color: [u8; 3],
    pub points: Vec<(f64, f64)>,
}

const W: usize = 900;
const H: usize = 520;
const LEFT: usize = 80;
const RIGHT: usize = 30;
const TOP: usize = 50;
const BOTTOM: usize = 50;

/// 3×5 glyphs, one row per element, three bits per row (left bit first).
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        '+' => [0, 2, 7, 2, 0],
        '_' => [0, 0, 0, 0, 7],
        'a' => [0, 3, 5, 5, 3],
        'b' => [4, 6, 5, 5, 6],
        'c' => [0, 3, 4, 4, 3],
        'd' => [1, 3, 5, 5, 3],
        'e' => [0, 7, 7, 4, 7],
        'f' => [3, 4, 7, 4, 4],
        'g' => [3, 5, 3, 1, 6],
        'h' => [4, 6, 5, 5, 5],
        'i' => [2, 0, 2, 2, 2],
        'j' => [1, 0, 1, 5, 2],
        'k' => [4, 5, 6, 5, 5],
        'l' => [6, 2, 2, 2, 7],
        'm' => [0, 7, 7, 5, 5],
        'n' => [0, 6, 5, 5, 5],
        'o' => [0, 2, 5, 5, 2],
        'p' => [0, 6, 5, 6, 4],
        'q' => [0, 3, 5, 3, 1],
        'r' => [0, 5, 6, 4, 4],
        's' => [0, 3, 6, 3, 6],
        't' => [2, 7, 2, 2, 3],
        'u' => [0, 5, 5, 5, 7],
        'v' => [0, 5, 5, 5, 2],
        'w' => [0, 5, 5, 7, 5],
        'x' => [0, 5, 2, 2, 5],
        'y' => [5, 5, 3, 1, 6],
        'z' => [0, 7, 1, 2, 7],
        '/' => [1, 1, 2, 4, 4],
        ' ' => [0, 0, 0, 0, 0],
        _ => return None,
    })
}

struct Canvas {
    pixels: Vec<u8>,
}

impl Canvas {
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            let i = (y as usize * W + x as usize) * 3;
            self.pixels[i..i + 3].copy_from_slice(&c);
        }
    }

    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3]) {
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as i64).max(1);
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            self.set(x.round() as i64, y.round() as i64, c);
            self.set(x.round() as i64, y.round() as i64 + 1, c);
        }
    }

    fn text(&mut self, x: usize, y: usize, s: &str, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let Some(rows) = glyph(ch.to_ascii_lowercase()) else { continue };
            for (r, bits) in rows.iter().enumerate() {
                for b in 0..3 {
                    if bits & (4 >> b) != 0 {
                        for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                            self.set((x + k * 8 + b * 2 + dx) as i64, (y + r * 2 + dy) as i64, c);
                        }
                    }
                }
            }
        }
    }
}

fn label(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-2 || v.abs() >= 1e5) {
        format!("{v:.1e}")
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// Draws the series (x: step, y: value) into a PNG at `path`.
pub fn write_png(path: &Path, series: &[Series]) -> std::io::Result<()> {
    let mut canvas = Canvas { pixels: vec![255; W * H * 3] };
    let points: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().copied()).filter(|(_, y)| y.is_finite()).collect();
    let (mut x0, mut x1) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if points.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let (pw, ph) = ((W - LEFT - RIGHT) as f64, (H - TOP - BOTTOM) as f64);
    let px = |x: f64| LEFT as f64 + (x - x0) / (x1 - x0) * pw;
    let py = |y: f64| TOP as f64 + (1.0 - (y - y0) / (y1 - y0)) * ph;
    let grid = [225, 225, 225];
    let ink = [60, 60, 60];
    for i in 0..=5 {
        let y = y0 + (y1 - y0) * i as f64 / 5.0;
        canvas.line((LEFT as f64, py(y)), ((W - RIGHT) as f64, py(y)), grid);
        canvas.text(4, py(y) as usize - 4, &label(y), ink);
        let x = x0 + (x1 - x0) * i as f64 / 5.0;
        canvas.line((px(x), TOP as f64), (px(x), (H - BOTTOM) as f64), grid);
        let text = format!("{}", x.round() as i64);
        canvas.text((px(x) as usize).saturating_sub(text.len() * 4), H - BOTTOM + 10, &text, ink);
    }
    canvas.line((LEFT as f64, TOP as f64), (LEFT as f64, (H - BOTTOM) as f64), ink);
    canvas.line((LEFT as f64, (H - BOTTOM) as f64), ((W - RIGHT) as f64, (H - BOTTOM) as f64), ink);
    canvas.text(W / 2 - 16, H - 18, "step", ink);
    let mut legend_x = LEFT;
    for s in series {
        for dy in 0..10 {
            for dx in 0..10 {
                canvas.set((legend_x + dx) as i64, (16 + dy) as i64, s.color);
            }
        }
        canvas.text(legend_x + 16, 18, &s.name, ink);
        legend_x += 40 + s.name.len() * 8;
        let pts: Vec<(f64, f64)> = s.points.iter().filter(|(_, y)| y.is_finite()).map(|&(x, y)| (px(x), py(y))).collect();
        if pts.len() == 1 {
            canvas.line((pts[0].0 - 3.0, pts[0].1), (pts[0].0 + 3.0, pts[0].1), s.color);
        }
        for w in pts.windows(2) {
            canvas.line(w[0], w[1], s.color);
        }
    }
    let file = std::fs::File::create(path)?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), W as u32, H as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(std::io::Error::other)?;
    writer.write_image_data(&canvas.pixels).map_err(std::io::Error::other)?;
    Ok(())
}
