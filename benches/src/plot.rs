//! `sluice bench --plot out.svg`: throughput over time and the latency
//! distribution of every run, as a self-contained SVG.

use crate::report::Record;
use std::fmt::Write as _;

const W: f64 = 920.0;
const PANEL_H: f64 = 320.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

struct Panel {
    y0: f64,
    x: (f64, f64),
    y: (f64, f64),
}

impl Panel {
    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x.0) / (self.x.1 - self.x.0).max(1e-12) * (W - LEFT - RIGHT)
    }
    fn py(&self, y: f64) -> f64 {
        self.y0 + PANEL_H
            - BOTTOM
            - (y - self.y.0) / (self.y.1 - self.y.0).max(1e-12) * (PANEL_H - TOP - BOTTOM)
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn axes(
    s: &mut String,
    p: &Panel,
    title: &str,
    xlabel: &str,
    xticks: &[(f64, String)],
    yticks: &[(f64, String)],
) {
    let (x0, x1) = (LEFT, W - RIGHT);
    let (y0, y1) = (p.y0 + TOP, p.y0 + PANEL_H - BOTTOM);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{}" font-size="15" font-weight="bold">{}</text>"#,
        p.y0 + 28.0,
        esc(title)
    );
    let _ = writeln!(
        s,
        r##"<rect x="{x0}" y="{y0}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        x1 - x0,
        y1 - y0
    );
    for (v, label) in xticks {
        let x = p.px(*v);
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{y0}" x2="{x}" y2="{y1}" stroke="#eee"/><text x="{x}" y="{}" font-size="11" text-anchor="middle">{}</text>"##,
            y1 + 16.0,
            esc(label)
        );
    }
    for (v, label) in yticks {
        let y = p.py(*v);
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>"##,
            x0 - 6.0,
            y + 4.0,
            esc(label)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text>"#,
        (x0 + x1) / 2.0,
        y1 + 36.0,
        esc(xlabel)
    );
}

fn polyline(s: &mut String, p: &Panel, pts: &[(f64, f64)], color: &str) {
    if pts.is_empty() {
        return;
    }
    let d: Vec<String> = pts
        .iter()
        .map(|(x, y)| format!("{:.1},{:.1}", p.px(*x), p.py(*y)))
        .collect();
    let _ = writeln!(
        s,
        r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.8"/>"#,
        d.join(" ")
    );
}

fn nice_ticks(max: f64, n: usize) -> Vec<f64> {
    if max <= 0.0 {
        return vec![0.0];
    }
    let raw = max / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(raw);
    (0..=((max / step).ceil() as usize))
        .map(|i| i as f64 * step)
        .collect()
}

/// The SVG for a record.
pub fn svg(r: &Record) -> String {
    let mut s = String::new();
    let h = PANEL_H * 2.0 + 40.0;
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="sans-serif">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);

    // Throughput over time.
    let tmax = r
        .runs
        .iter()
        .flat_map(|x| x.timeline.iter().map(|p| p.0))
        .fold(0.0, f64::max)
        .max(0.1);
    let ymax = r
        .runs
        .iter()
        .flat_map(|x| x.timeline.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.1;
    let p1 = Panel {
        y0: 0.0,
        x: (0.0, tmax),
        y: (0.0, ymax),
    };
    let xt: Vec<(f64, String)> = nice_ticks(tmax, 8)
        .into_iter()
        .filter(|v| *v <= tmax)
        .map(|v| (v, format!("{v}s")))
        .collect();
    let yt: Vec<(f64, String)> = nice_ticks(ymax, 5)
        .into_iter()
        .filter(|v| *v <= ymax)
        .map(|v| {
            (
                v,
                if v >= 1e6 {
                    format!("{:.1}M", v / 1e6)
                } else {
                    format!("{:.0}k", v / 1e3)
                },
            )
        })
        .collect();
    let title = format!(
        "{}: events/s over time ({} run{}, commit {})",
        r.scenario,
        r.runs.len(),
        if r.runs.len() == 1 { "" } else { "s" },
        r.commit
    );
    axes(&mut s, &p1, &title, "seconds since start", &xt, &yt);
    for (i, run) in r.runs.iter().enumerate() {
        polyline(&mut s, &p1, &run.timeline, COLORS[i % COLORS.len()]);
    }

    // Latency by percentile, on a "nines" axis.
    let nines = |p: f64| -> f64 { (-(1.0 - (p / 100.0).min(0.99999)).log10()).max(0.0) };
    let lmax = r
        .runs
        .iter()
        .flat_map(|x| x.latency_curve.iter().map(|p| p.1))
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let lmin = r
        .runs
        .iter()
        .flat_map(|x| x.latency_curve.iter().map(|p| p.1))
        .filter(|v| *v > 0)
        .min()
        .unwrap_or(1) as f64;
    let (ly0, ly1) = (
        lmin.max(1.0).log10().floor(),
        lmax.log10().ceil().max(lmin.log10().floor() + 1.0),
    );
    let p2 = Panel {
        y0: PANEL_H + 20.0,
        x: (0.0, 5.0),
        y: (ly0, ly1),
    };
    let xt: Vec<(f64, String)> = [
        (0.0, "0%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
        (5.0, "99.999%"),
    ]
    .iter()
    .map(|(v, l)| (*v, l.to_string()))
    .collect();
    let yt: Vec<(f64, String)> = (ly0 as i64..=ly1 as i64)
        .map(|e| {
            let us = 10f64.powi(e as i32);
            (
                e as f64,
                if us >= 1000.0 {
                    format!("{} ms", us / 1000.0)
                } else {
                    format!("{us} µs")
                },
            )
        })
        .collect();
    axes(
        &mut s,
        &p2,
        "latency from ingest to sink ack, by percentile",
        "percentile",
        &xt,
        &yt,
    );
    for (i, run) in r.runs.iter().enumerate() {
        let pts: Vec<(f64, f64)> = run
            .latency_curve
            .iter()
            .filter(|(_, v)| *v > 0)
            .map(|(p, v)| (nines(*p), (*v as f64).log10()))
            .collect();
        polyline(&mut s, &p2, &pts, COLORS[i % COLORS.len()]);
    }
    for (i, _) in r.runs.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="12" fill="{}">run {}</text>"#,
            W - RIGHT - 60.0,
            TOP + 18.0 + 16.0 * i as f64,
            COLORS[i % COLORS.len()],
            i + 1
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::RunResult;

    #[test]
    fn the_svg_has_a_line_per_run_and_panel() {
        let mut r = Record {
            scenario: "x".into(),
            runs: (0..2)
                .map(|i| RunResult {
                    timeline: vec![(0.1, 1000.0 + i as f64), (0.2, 2000.0)],
                    latency_curve: vec![(50.0, 100), (99.0, 1000), (100.0, 5000)],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        r.summarize();
        let svg = svg(&r);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4);
    }
}
