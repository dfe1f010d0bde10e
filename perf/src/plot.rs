//! Plain SVG plots of a report, written next to the markdown table: receive rate per
//! frame size per DUT (median bar, min–max whisker), and latency CDFs per DUT.

use crate::dut::DutKind;
use crate::p2p::{label, stats, GenKind, P2pConfig, Report};

const W: f64 = 760.0;
const H: f64 = 420.0;
const L: f64 = 70.0; // left margin
const B: f64 = 60.0; // bottom margin
const T: f64 = 40.0; // top margin
const COLORS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

fn color(d: DutKind) -> &'static str {
    let i = DutKind::ALL.iter().position(|x| *x == d).unwrap_or(0);
    COLORS[i % COLORS.len()]
}

fn header(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{title}</text>\n",
        W / 2.0
    )
}

fn axes(o: &mut String, ymax: f64, ylabel: &str) {
    let (x0, y0, y1) = (L, H - B, T);
    o.push_str(&format!(
        "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{}\" y2=\"{y0}\" stroke=\"black\"/>\n",
        W - 20.0
    ));
    o.push_str(&format!(
        "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\" stroke=\"black\"/>\n"
    ));
    for k in 0..=5 {
        let v = ymax * k as f64 / 5.0;
        let y = y0 - (y0 - y1) * k as f64 / 5.0;
        o.push_str(&format!(
            "<line x1=\"{}\" y1=\"{y}\" x2=\"{x0}\" y2=\"{y}\" stroke=\"black\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.1}</text>\n",
            x0 - 4.0,
            x0 - 6.0,
            y + 4.0
        ));
    }
    o.push_str(&format!(
        "<text transform=\"translate(18,{}) rotate(-90)\" text-anchor=\"middle\">{ylabel}</text>\n",
        (y0 + y1) / 2.0
    ));
}

fn legend(o: &mut String, duts: &[DutKind]) {
    for (i, d) in duts.iter().enumerate() {
        let x = L + 10.0 + 130.0 * i as f64;
        o.push_str(&format!(
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>\n",
            H - 22.0,
            color(*d),
            x + 16.0,
            H - 12.0,
            d.name()
        ));
    }
}

/// Receive rate (Mpps) per frame size and DUT with generator `gen`: median bars with
/// min–max whiskers.
pub fn rates_svg(r: &Report, cfg: &P2pConfig, gen: GenKind) -> String {
    let duts: Vec<DutKind> = cfg
        .duts
        .iter()
        .copied()
        .filter(|d| r.samples.iter().any(|s| s.dut == *d && s.gen == gen))
        .collect();
    let mut o = header(&format!(
        "p2p maximum receive rate, {} generator (median, min–max)",
        gen.name()
    ));
    let ymax = r
        .samples
        .iter()
        .filter(|s| s.gen == gen)
        .map(|s| s.trial.rx_pps() / 1e6)
        .fold(1.0f64, f64::max)
        * 1.1;
    axes(&mut o, ymax, "Mpps");
    let groups = cfg.frame_sizes.len().max(1) as f64;
    let gw = (W - 20.0 - L) / groups;
    let bw = gw * 0.8 / duts.len().max(1) as f64;
    let y = |v: f64| (H - B) - (H - B - T) * v / ymax;
    for (gi, &f) in cfg.frame_sizes.iter().enumerate() {
        let gx = L + gw * gi as f64 + gw * 0.1;
        o.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{} B</text>\n",
            gx + gw * 0.4,
            H - B + 16.0,
            label(f)
        ));
        for (di, &d) in duts.iter().enumerate() {
            let v: Vec<f64> = r
                .samples
                .iter()
                .filter(|s| s.dut == d && s.frame == f && s.gen == gen)
                .map(|s| s.trial.rx_pps() / 1e6)
                .collect();
            if v.is_empty() {
                continue;
            }
            let (mn, med, mx) = stats(&v);
            let x = gx + bw * di as f64;
            o.push_str(&format!(
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>\n",
                y(med),
                bw * 0.9,
                (H - B) - y(med),
                color(d)
            ));
            let cx = x + bw * 0.45;
            o.push_str(&format!(
                "<line x1=\"{cx:.1}\" y1=\"{:.1}\" x2=\"{cx:.1}\" y2=\"{:.1}\" stroke=\"black\"/>\n",
                y(mn),
                y(mx)
            ));
        }
    }
    legend(&mut o, &duts);
    o.push_str("</svg>\n");
    o
}

/// Latency CDF per DUT at 50 % of NDR (first frame size), log-scaled latency axis.
pub fn latency_svg(r: &Report, cfg: &P2pConfig) -> Option<String> {
    let f = *cfg.frame_sizes.first()?;
    let curves: Vec<(DutKind, &Vec<(f64, f64)>)> = cfg
        .duts
        .iter()
        .filter_map(|d| {
            r.samples
                .iter()
                .find(|s| s.dut == *d && s.frame == f && s.throughput.is_some())
                .and_then(|s| s.throughput.as_ref())
                .and_then(|t| t.latency.get(1))
                .map(|l| (*d, &l.cdf))
        })
        .filter(|(_, c)| !c.is_empty())
        .collect();
    if curves.is_empty() {
        return None;
    }
    let mut o = header(&format!("latency CDF at 50 % of NDR, {} B", label(f)));
    let lmax = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        .log10()
        .ceil();
    let lmin = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .fold(f64::MAX, f64::min)
        .max(0.01)
        .log10()
        .floor();
    axes(&mut o, 1.0, "fraction of frames");
    let x = |us: f64| L + (W - 20.0 - L) * ((us.max(0.01).log10() - lmin) / (lmax - lmin).max(1.0));
    let y = |q: f64| (H - B) - (H - B - T) * q;
    let mut e = lmin as i32;
    while e <= lmax as i32 {
        let v = 10f64.powi(e);
        o.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{} µs</text>\n",
            x(v),
            H - B + 16.0,
            if v < 1.0 {
                format!("{v}")
            } else {
                format!("{v:.0}")
            }
        ));
        e += 1;
    }
    for (d, c) in &curves {
        let pts: Vec<String> = c
            .iter()
            .map(|(q, us)| format!("{:.1},{:.1}", x(*us), y(*q)))
            .collect();
        o.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>\n",
            color(*d),
            pts.join(" ")
        ));
    }
    legend(&mut o, &curves.iter().map(|c| c.0).collect::<Vec<_>>());
    o.push_str("</svg>\n");
    Some(o)
}
