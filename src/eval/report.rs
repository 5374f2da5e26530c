//! Presenting an `EvalReport`: a table for people, JSON for machines, and
//! a self-contained HTML page with a recall@K chart per path.

use super::run::EvalReport;
use std::fmt::Write;

pub fn table(r: &EvalReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "dataset {} ({}), variant {}, users counted {}",
        r.dataset,
        &r.fingerprint.get(..12).unwrap_or(&r.fingerprint),
        r.variant,
        r.users_counted
    );
    let _ = writeln!(
        s,
        "split: test {} train / {} held-out, val {} train / {} held-out, catalogue {} items",
        r.split.test.n_train,
        r.split.test.n_heldout,
        r.split.val.n_train,
        r.split.val.n_heldout,
        r.split.test.n_catalog
    );
    let _ = writeln!(
        s,
        "\n{:<10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>8} {:>9} {:>8} {:>8}",
        "model",
        "recall@10",
        "recall@20",
        "ndcg@10",
        "ndcg@20",
        "hr@10",
        "hr@20",
        "cov@20",
        "val ndcg",
        "train s",
        "score s"
    );
    for row in &r.rows {
        let m = &row.metrics;
        let _ = writeln!(
            s,
            "{:<10} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>7.4} {:>7.4} {:>8.4} {:>9} {:>8.2} {:>8.2}",
            row.model,
            m.recall10,
            m.recall20,
            m.ndcg10,
            m.ndcg20,
            m.hr10,
            m.hr20,
            m.coverage20,
            row.val_ndcg10
                .map_or("-".to_string(), |v| format!("{v:.4}")),
            row.train_seconds,
            row.score_seconds
        );
    }
    let _ = writeln!(
        s,
        "\nmerged candidates: recall@{} = {:.4} (mean {:.0} candidates per user)",
        r.candidates.budget, r.candidates.recall, r.candidates.mean_candidates
    );
    let _ = writeln!(
        s,
        "ranker: {} training groups, {} rows, best iteration {}, {:.1}s",
        r.ranker.train_groups, r.ranker.rows, r.ranker.best_iteration, r.ranker.seconds
    );
    let _ = writeln!(
        s,
        "chosen on validation: als factors={} reg={} alpha={}; itemcf neighbours={} shrink={}",
        r.chosen.als.factors,
        r.chosen.als.regularization,
        r.chosen.als.alpha,
        r.chosen.itemcf.neighbours,
        r.chosen.itemcf.shrink
    );
    let _ = writeln!(s, "total {:.1}s", r.seconds);
    s
}

pub fn html(r: &EvalReport) -> String {
    let (w, h, pad) = (640.0, 360.0, 48.0);
    let max_k = r
        .curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .max()
        .unwrap_or(1) as f64;
    let max_y = r
        .curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(r.candidates.recall)
        .max(0.01);
    let x = |k: f64| pad + (k.ln() / max_k.ln()) * (w - 2.0 * pad);
    let y = |v: f64| h - pad - v / max_y * (h - 2.0 * pad);
    let colours = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    ];
    let mut svg = format!("<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>");
    let _ = write!(
        svg,
        "<line x1='{pad}' y1='{}' x2='{}' y2='{}' stroke='#333'/>",
        h - pad,
        w - pad,
        h - pad
    );
    let _ = write!(
        svg,
        "<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{}' stroke='#333'/>",
        h - pad
    );
    if let Some(c) = r.curves.first() {
        for &(k, _) in &c.points {
            let _ = write!(
                svg,
                "<text x='{:.1}' y='{}' text-anchor='middle'>{k}</text>",
                x(k as f64),
                h - pad + 16.0
            );
        }
    }
    for t in 0..=4 {
        let v = max_y * t as f64 / 4.0;
        let _ = write!(
            svg,
            "<text x='{}' y='{:.1}' text-anchor='end'>{v:.2}</text>",
            pad - 6.0,
            y(v) + 4.0
        );
    }
    let _ = write!(
        svg,
        "<text x='{}' y='{}' text-anchor='middle'>K (log scale)</text>",
        w / 2.0,
        h - 8.0
    );
    for (ci, c) in r.curves.iter().enumerate() {
        let col = colours[ci % colours.len()];
        let pts: Vec<String> = c
            .points
            .iter()
            .map(|&(k, v)| format!("{:.1},{:.1}", x(k as f64), y(v)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill='none' stroke='{col}' stroke-width='2' points='{}'/>",
            pts.join(" ")
        );
        let _ = write!(
            svg,
            "<text x='{}' y='{}' fill='{col}'>{}</text>",
            w - pad - 90.0,
            pad + 16.0 * ci as f64,
            c.model
        );
    }
    let cx = x(r.candidates.budget.min(max_k as usize) as f64);
    let _ = write!(
        svg,
        "<circle cx='{cx:.1}' cy='{:.1}' r='5' fill='#000'/><text x='{:.1}' y='{:.1}'>merged candidates</text>",
        y(r.candidates.recall),
        cx - 120.0,
        y(r.candidates.recall) - 8.0
    );
    svg.push_str("</svg>");
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>funnel eval: {}</title></head>\
         <body><h1>funnel eval: {}</h1><p>recall@K per recall path and for the ranked pipeline (test phase, \
         parameters chosen on validation)</p>{svg}<pre>{}</pre><details><summary>JSON</summary><pre>{}</pre></details></body></html>",
        esc(&r.dataset),
        esc(&r.dataset),
        esc(&table(r)),
        esc(&serde_json::to_string_pretty(r).unwrap_or_default())
    )
}
