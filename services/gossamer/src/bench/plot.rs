//! PNG charts of benchmark figures, drawn with plotters. The font is built into the
//! binary, so a chart needs no system fonts.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

/// One query's figures.
pub struct Bar {
    pub label: String,
    pub p50: f64,
    pub p99: f64,
    pub ripgrep: Option<f64>,
}

const FONT: &str = "gossamer-mono";

fn register_font() {
    static FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSansMono.ttf");
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font, built in.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
}

/// Horizontal bars of p50 and p99 per query, with ripgrep's time beside them where
/// there is one, on a log scale of milliseconds.
pub fn latency_png(path: &Path, title: &str, bars: &[Bar]) -> Result<()> {
    register_font();
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    // One band per query, and one more at the bottom for the legend.
    let height = 230 + 90 * bars.len() as u32;
    let root = BitMapBackend::new(path, (1200, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let top = bars.iter().flat_map(|b| [b.p99, b.ripgrep.unwrap_or(0.0)]).fold(1.0, f64::max) * 2.0;
    let bottom = bars.iter().map(|b| b.p50).fold(1.0, f64::min).max(0.01) / 2.0;
    let n = bars.len() as f64 + 1.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 20))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(330)
        .build_cartesian_2d((bottom..top).log_scale(), n..0.0)
        .map_err(|e| err(&e))?;
    let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels((bars.len() + 1) * 2 + 1)
        .y_label_formatter(&|y| {
            // Labels sit at the middle of each query's band.
            let i = (*y - 0.5).round();
            if (y - 0.5 - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
                labels[i as usize].clone()
            } else {
                String::new()
            }
        })
        .x_desc("milliseconds")
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(|e| err(&e))?;
    let series: [(&str, RGBColor, f64, f64); 3] = [
        ("Gossamer p50", RGBColor(31, 119, 180), 0.12, 0.37),
        ("Gossamer p99", RGBColor(140, 190, 225), 0.37, 0.62),
        ("ripgrep over the same NDJSON", RGBColor(230, 120, 30), 0.62, 0.87),
    ];
    for (k, (name, color, from, to)) in series.iter().enumerate() {
        let rects: Vec<Rectangle<(f64, f64)>> = bars
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let v = match k {
                    0 => Some(b.p50),
                    1 => Some(b.p99),
                    _ => b.ripgrep,
                }?;
                Some(Rectangle::new([(bottom, i as f64 + from), (v.max(bottom), i as f64 + to)], color.filled()))
            })
            .collect();
        let color = *color;
        chart
            .draw_series(rects)
            .map_err(|e| err(&e))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], color.filled()));
    }
    let values: Vec<Text<(f64, f64), String>> = bars
        .iter()
        .enumerate()
        .flat_map(|(i, b)| {
            [(Some(b.p50), 0.12), (Some(b.p99), 0.37), (b.ripgrep, 0.62)]
                .into_iter()
                .filter_map(move |(v, from)| v.map(|v| (v, from)))
                .map(move |(v, from)| Text::new(format!(" {v:.1}"), (v.max(bottom), i as f64 + from + 0.04), (FONT, 14).into_font()))
        })
        .collect();
    chart.draw_series(values).map_err(|e| err(&e))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_with_every_query() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.png");
        let bars = vec![
            Bar { label: "Q1 selective".into(), p50: 3.0, p99: 9.0, ripgrep: Some(300.0) },
            Bar { label: "Q3 count by level".into(), p50: 20.0, p99: 40.0, ripgrep: None },
        ];
        latency_png(&path, "test chart", &bars).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG file");
        // 1200 px wide, as drawn (the IHDR chunk holds width then height, big-endian).
        assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 1200);
    }
}
