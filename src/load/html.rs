//! The report as one self-contained HTML page: the table, then for each participant plots over
//! time of what it received (bitrate, simulcast layer, loss, latency), drawn here as inline SVG.
//! Nothing is fetched when the page is viewed.

use std::fmt::Write;

use crate::load::report::{ParticipantReport, Report, TimelineSample, TrackReport};

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 150.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 22.0;
const BOTTOM: f64 = 22.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];
/// Participants the page plots (a run of hundreds would make a page nobody scrolls).
const PARTICIPANTS_PLOTTED: usize = 50;

/// One line of a plot.
struct Series {
    label: String,
    color: &'static str,
    points: Vec<(f64, f64)>,
}

/// The page.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let verdict = if report.passed() { "PASS" } else { "FAIL" };
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>switchboard load: {verdict}</title><style>{STYLE}</style></head><body>\n\
         <h1>switchboard load report: {verdict}</h1>\n<pre>{}</pre>\n",
        escape(&report.table())
    );
    let x_max = report
        .participants
        .iter()
        .flat_map(|p| p.tracks.iter())
        .filter_map(|t| t.timeline.last().map(|s| s.t + 1.0))
        .fold(report.wall_seconds.max(1.0), f64::max);
    let receivers: Vec<&ParticipantReport> = report
        .participants
        .iter()
        .filter(|p| p.tracks.iter().any(|t| !t.timeline.is_empty()))
        .collect();
    for p in receivers.iter().take(PARTICIPANTS_PLOTTED) {
        participant(&mut out, p, x_max);
    }
    if receivers.len() > PARTICIPANTS_PLOTTED {
        let _ = writeln!(
            out,
            "<p>... and {} more participants (all of them are in the JSON report).</p>",
            receivers.len() - PARTICIPANTS_PLOTTED
        );
    }
    out.push_str("</body></html>\n");
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:1em 2em;color:#222}\
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:12px}\
h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ccc}\
.plots{display:flex;flex-wrap:wrap;gap:8px}\
svg{background:#fff;border:1px solid #ddd}\
svg text{font-size:10px;fill:#444}.legend span{margin-right:1.2em;font-size:12px}";

fn participant(out: &mut String, p: &ParticipantReport, x_max: f64) {
    let _ = write!(out, "<h2>{}", escape(&p.name));
    if let Some(d) = &p.downlink {
        let _ = write!(
            out,
            " (downlink {}, {:.0} ms, {:.1}% loss)",
            d.rate_bps
                .map_or("unlimited".to_string(), |b| format!("{} kbit/s", b / 1000)),
            d.delay_ms,
            d.loss_percent
        );
    }
    out.push_str("</h2>\n<div class=\"legend\">");
    let tracks: Vec<&TrackReport> = p.tracks.iter().filter(|t| !t.timeline.is_empty()).collect();
    for (i, t) in tracks.iter().enumerate() {
        let _ = write!(
            out,
            "<span style=\"color:{}\">&#9632; {} {}</span>",
            COLORS[i % COLORS.len()],
            escape(&t.publisher_name),
            escape(&t.kind)
        );
    }
    out.push_str("</div>\n<div class=\"plots\">\n");
    let series = |value: &dyn Fn(&TimelineSample) -> Option<f64>, only_simulcast: bool| {
        tracks
            .iter()
            .enumerate()
            .filter(|(_, t)| !only_simulcast || t.simulcast)
            .map(|(i, t)| Series {
                label: format!("{} {}", t.publisher_name, t.kind),
                color: COLORS[i % COLORS.len()],
                points: t
                    .timeline
                    .iter()
                    .filter_map(|s| value(s).map(|v| (s.t, v)))
                    .collect(),
            })
            .collect::<Vec<_>>()
    };
    out.push_str(&plot(
        "receive bitrate",
        "kbit/s",
        &series(&|s: &TimelineSample| Some(s.bitrate_bps / 1000.0), false),
        x_max,
        None,
    ));
    let layers = series(&|s: &TimelineSample| s.layer.map(f64::from), true);
    if !layers.is_empty() {
        out.push_str(&plot(
            "simulcast layer",
            "",
            &layers,
            x_max,
            Some(&[(0.0, "q"), (1.0, "h"), (2.0, "f")][..]),
        ));
    }
    out.push_str(&plot(
        "loss",
        "packets/s",
        &series(&|s: &TimelineSample| Some(s.lost as f64), false),
        x_max,
        None,
    ));
    out.push_str(&plot(
        "latency (mean of each second)",
        "ms",
        &series(&|s: &TimelineSample| s.latency_ms, false),
        x_max,
        None,
    ));
    out.push_str("</div>\n");
}

/// One plot as inline SVG: time on x (0 to `x_max` seconds), each series a line.
/// `y_labels` names fixed y values (the layers); otherwise the axis is scaled to the data.
fn plot(
    title: &str,
    unit: &str,
    series: &[Series],
    x_max: f64,
    y_labels: Option<&[(f64, &str)]>,
) -> String {
    let mut svg = String::new();
    let data_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let y_max = match y_labels {
        Some(labels) => labels.iter().map(|l| l.0).fold(0.0, f64::max) + 0.3,
        None => nice_ceiling(data_max),
    };
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |t: f64| LEFT + (t / x_max).clamp(0.0, 1.0) * plot_w;
    let y = |v: f64| TOP + plot_h - (v / y_max).clamp(0.0, 1.0) * plot_h;
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\"><title>{}</title>\
         <text x=\"{LEFT}\" y=\"14\" font-weight=\"bold\">{}{}</text>",
        escape(title),
        escape(title),
        if unit.is_empty() {
            String::new()
        } else {
            format!(" ({})", escape(unit))
        }
    );
    // Axes, the y ticks and the x ticks.
    let _ = write!(
        svg,
        "<path d=\"M{LEFT} {TOP}V{:.1}H{:.1}\" stroke=\"#888\" fill=\"none\"/>",
        TOP + plot_h,
        LEFT + plot_w
    );
    let ticks: Vec<(f64, String)> = match y_labels {
        Some(labels) => labels.iter().map(|(v, l)| (*v, l.to_string())).collect(),
        None => [0.0, 0.5, 1.0]
            .iter()
            .map(|f| (y_max * f, short_number(y_max * f)))
            .collect(),
    };
    for (v, label) in ticks {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <path d=\"M{LEFT} {:.1}H{:.1}\" stroke=\"#eee\"/>",
            LEFT - 4.0,
            y(v) + 3.0,
            escape(&label),
            y(v),
            LEFT + plot_w
        );
    }
    let step = nice_step(x_max / 6.0);
    let mut t = 0.0;
    while t <= x_max + 1e-9 {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}s</text>",
            x(t),
            HEIGHT - 6.0,
            short_number(t)
        );
        t += step;
    }
    for s in series.iter().filter(|s| !s.points.is_empty()) {
        let mut d = String::new();
        for (i, (t, v)) in s.points.iter().enumerate() {
            let _ = write!(
                d,
                "{}{:.1} {:.1}",
                if i == 0 { "M" } else { "L" },
                x(*t),
                y(*v)
            );
        }
        let _ = write!(
            svg,
            "<path d=\"{d}\" stroke=\"{}\" stroke-width=\"1.5\" fill=\"none\"><title>{}</title></path>",
            s.color,
            escape(&s.label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The smallest of 1, 2 or 5 times a power of ten at or above `v` (1 for nothing).
fn nice_ceiling(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 {
        return 1.0;
    }
    let power = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * power)
}

/// A round tick step near `v`.
fn nice_step(v: f64) -> f64 {
    nice_ceiling(v.max(1.0))
}

fn short_number(v: f64) -> String {
    if v >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_round_to_numbers_a_person_reads() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(1480.0), 2000.0);
        assert_eq!(nice_ceiling(0.07), 0.1);
        assert_eq!(nice_step(20.0 / 6.0), 5.0);
        assert_eq!(short_number(2.5), "2.5");
        assert_eq!(short_number(1500.0), "1500");
    }

    #[test]
    fn a_plot_is_svg_with_a_line_per_series_and_names_are_escaped() {
        let series = [
            Series {
                label: "<pub> video".into(),
                color: COLORS[0],
                points: vec![(0.0, 0.0), (1.0, 1500.0), (2.0, 1480.0)],
            },
            Series {
                label: "empty".into(),
                color: COLORS[1],
                points: vec![],
            },
        ];
        let svg = plot("bitrate", "kbit/s", &series, 20.0, None);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("stroke-width=\"1.5\"").count(), 1);
        assert!(svg.contains("&lt;pub&gt; video") && !svg.contains("<pub>"));
        assert!(svg.contains(">2000<"), "the axis goes to 2000: {svg}");
        let layers = plot(
            "layer",
            "",
            &series,
            20.0,
            Some(&[(0.0, "q"), (2.0, "f")][..]),
        );
        assert!(layers.contains(">q<") && layers.contains(">f<"));
    }
}
