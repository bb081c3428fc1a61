//! `mustbuild report`: one self-contained HTML file about a run (styles and
//! the one small script inline, charts as inline SVG: it opens anywhere, with
//! no network): the summary, a timeline of the executions per slot, the step
//! graph, a table per step, and energy and memory charts.

use crate::human::{bytes as mib, joules, secs};
use crate::stats::{RunCosts, StepCost};
use mustbuild_store::history::RunRow;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What a report shows of a run.
#[derive(Debug)]
pub struct ReportInput<'a> {
    pub costs: &'a RunCosts,
    /// Its executions.
    pub runs: &'a [RunRow],
    /// Each step and the steps it reads from, in the pipeline's order, when
    /// the pipeline file could be read.
    pub graph: Option<Vec<(String, Vec<String>)>>,
    /// When it started (text, UTC).
    pub started: String,
    /// Its wall time, in seconds, when it finished.
    pub wall_s: Option<f64>,
}

/// Text safe inside HTML elements and attributes.
pub fn escape(s: &str) -> String {
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

/// A step's colour: a hue from its name, the same in every chart.
fn colour(step: &str) -> String {
    let h = step.bytes().fold(2166136261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16777619)
    });
    format!("hsl({}, 55%, 55%)", h % 360)
}

const STYLE: &str = "
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 2em; }
.sub { color: #666; margin-top: 0; }
dl.totals { display: grid; grid-template-columns: repeat(4, auto); gap: 0.3em 1.5em; }
dl.totals dt { color: #666; } dl.totals dd { margin: 0; font-weight: 600; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th { cursor: pointer; background: #f4f4f4; } th:first-child, td:first-child { text-align: left; }
td.m { text-align: left; color: #555; }
svg text { font: 11px system-ui, sans-serif; fill: #222; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; border-radius: 2px; margin-right: 0.4em; }
.note { color: #666; }
";

/// Clicking a column header sorts the table by it (numbers by their value).
const SCRIPT: &str = "
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, column) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var down = th.dataset.down !== '1';
      th.dataset.down = down ? '1' : '0';
      rows.sort(function (a, b) {
        var x = a.cells[column].dataset.v, y = b.cells[column].dataset.v;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (isNaN(nx) || isNaN(ny)) ? String(x).localeCompare(String(y)) : nx - ny;
        return down ? -c : c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
";

/// The report, as one HTML document.
pub fn render(input: &ReportInput<'_>) -> String {
    let c = input.costs;
    let mut h = String::new();
    let title = format!("mustbuild run {}", c.run);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n",
        escape(&title)
    );
    let _ = writeln!(
        h,
        "<h1>Run {} of <code>{}</code></h1><p class=\"sub\">started {} UTC</p>",
        c.run,
        escape(&c.pipeline),
        escape(&input.started)
    );
    summary(&mut h, input);
    timeline(&mut h, input.runs);
    if let Some(graph) = &input.graph {
        step_graph(&mut h, graph, &c.steps);
    }
    step_table(&mut h, &c.steps);
    bars(
        &mut h,
        "energy",
        "Energy per step",
        &c.steps,
        |s| s.energy_joules,
        joules,
    );
    bars(
        &mut h,
        "memory",
        "Peak memory per step",
        &c.steps,
        |s| s.peak_memory_max_bytes as f64,
        |v| mib(v as u64),
    );
    let _ = writeln!(h, "<script>{SCRIPT}</script>\n</body></html>");
    h
}

fn summary(h: &mut String, input: &ReportInput<'_>) {
    let c = input.costs;
    let t = &c.totals;
    let mut items: Vec<(&str, String)> = vec![
        ("executed", t.executions.to_string()),
        ("reused", t.reused.to_string()),
        ("failed", t.failed.to_string()),
        (
            "from the cache",
            t.hit_ratio
                .map_or("-".into(), |r| format!("{:.0}%", r * 100.0)),
        ),
        ("wall", input.wall_s.map_or("unfinished".into(), secs)),
        ("time in steps", secs(t.wall_s)),
        ("CPU", secs(t.cpu_s)),
        ("energy", joules(t.energy_joules)),
        ("CO2e", format!("{:.4} g", t.co2e_grams)),
        (
            "avoided by the cache",
            format!(
                "{}, {}",
                secs(t.avoided_wall_s),
                joules(t.avoided_energy_joules)
            ),
        ),
    ];
    if let Some(of) = c.same_as_run {
        items.push(("a no-op repeating run", of.to_string()));
    }
    h.push_str("<section id=\"summary\"><h2>Summary</h2><dl class=\"totals\">");
    for (k, v) in items {
        let _ = write!(h, "<dt>{}</dt><dd>{}</dd>", escape(k), escape(&v));
    }
    let _ = writeln!(
        h,
        "</dl><p class=\"note\">CO2e at PUE {} and {} gCO2e/kWh. Energy methods per step are in the table.</p></section>",
        c.footprint.pue, c.footprint.carbon_intensity
    );
}

/// Executions on lanes: each goes on the first lane free when it starts.
fn lanes(runs: &[RunRow]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by_key(|&i| (runs[i].started_ms, runs[i].id));
    let mut ends: Vec<i64> = Vec::new();
    let mut lane = vec![0; runs.len()];
    for i in order {
        let r = &runs[i];
        match ends.iter().position(|&e| e <= r.started_ms) {
            Some(l) => {
                ends[l] = r.finished_ms;
                lane[i] = l;
            }
            None => {
                lane[i] = ends.len();
                ends.push(r.finished_ms);
            }
        }
    }
    lane
}

fn timeline(h: &mut String, runs: &[RunRow]) {
    h.push_str("<section id=\"timeline\"><h2>Timeline</h2>");
    if runs.is_empty() {
        h.push_str("<p class=\"note\">Nothing was executed in this run.</p></section>\n");
        return;
    }
    let start = runs.iter().map(|r| r.started_ms).min().unwrap_or(0);
    let end = runs
        .iter()
        .map(|r| r.finished_ms)
        .max()
        .unwrap_or(start)
        .max(start + 1);
    let lane = lanes(runs);
    let n = lane.iter().max().map_or(1, |m| m + 1);
    let (width, row, left) = (1000.0, 22.0, 60.0);
    let scale = (width - left - 10.0) / (end - start) as f64;
    let height = n as f64 * row + 30.0;
    let _ = write!(
        h,
        "<svg role=\"img\" aria-label=\"executions over time, per slot\" viewBox=\"0 0 {width} {height}\" width=\"100%\">"
    );
    for l in 0..n {
        let _ = write!(
            h,
            "<text x=\"4\" y=\"{:.1}\">slot {}</text>",
            l as f64 * row + 15.0,
            l + 1
        );
    }
    for (r, l) in runs.iter().zip(&lane) {
        let x = left + (r.started_ms - start) as f64 * scale;
        let w = ((r.finished_ms - r.started_ms) as f64 * scale).max(1.0);
        let y = *l as f64 * row + 2.0;
        let name = match &r.instance {
            Some(i) if !i.is_empty() => format!("{} [{}]", r.step, i),
            _ => r.step.clone(),
        };
        let tip = format!(
            "{name}: {} ({})",
            secs((r.finished_ms - r.started_ms) as f64 / 1e3),
            r.outcome
        );
        let _ = write!(
            h,
            "<g><title>{}</title><rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{}\"{}/>",
            escape(&tip),
            row - 4.0,
            colour(&r.step),
            if r.outcome == "succeeded" {
                ""
            } else {
                " stroke=\"#c00\" stroke-width=\"2\""
            }
        );
        // A label where it fits (about 6 px a character).
        if w > 6.0 * name.chars().count() as f64 + 6.0 {
            let _ = write!(
                h,
                "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                x + 3.0,
                y + 13.0,
                escape(&name)
            );
        }
        h.push_str("</g>");
    }
    let _ = writeln!(
        h,
        "<text x=\"{left}\" y=\"{:.1}\">0 s</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text></svg></section>",
        height - 6.0,
        width - 10.0,
        height - 6.0,
        escape(&secs((end - start) as f64 / 1e3))
    );
}

/// Steps in columns by depth (the longest path from a step that reads no
/// other), edges from what a step reads to it.
fn step_graph(h: &mut String, graph: &[(String, Vec<String>)], costs: &[StepCost]) {
    let index: BTreeMap<&str, usize> = graph
        .iter()
        .enumerate()
        .map(|(i, (s, _))| (s.as_str(), i))
        .collect();
    // Steps are in an order where what a step reads comes first.
    let mut depth = vec![0usize; graph.len()];
    for (i, (_, deps)) in graph.iter().enumerate() {
        depth[i] = deps
            .iter()
            .filter_map(|d| index.get(d.as_str()))
            .map(|&d| depth[d] + 1)
            .max()
            .unwrap_or(0);
    }
    let mut rows_in = vec![0usize; depth.iter().max().map_or(1, |d| d + 1)];
    let mut place = vec![(0usize, 0usize); graph.len()];
    for (i, d) in depth.iter().enumerate() {
        place[i] = (*d, rows_in[*d]);
        rows_in[*d] += 1;
    }
    let (col, row, box_w, box_h) = (190.0, 40.0, 160.0, 26.0);
    let width = rows_in.len() as f64 * col + 20.0;
    let height = rows_in.iter().max().copied().unwrap_or(1) as f64 * row + 20.0;
    let at = |i: usize| {
        (
            10.0 + place[i].0 as f64 * col,
            10.0 + place[i].1 as f64 * row,
        )
    };
    let by_step: BTreeMap<&str, &StepCost> = costs.iter().map(|c| (c.step.as_str(), c)).collect();
    let _ = write!(
        h,
        "<section id=\"graph\"><h2>Step graph</h2><svg role=\"img\" aria-label=\"the steps and what each reads\" viewBox=\"0 0 {width} {height}\" width=\"100%\" style=\"max-width:{width}px\">"
    );
    for (i, (_, deps)) in graph.iter().enumerate() {
        let (x2, y2) = at(i);
        for d in deps.iter().filter_map(|d| index.get(d.as_str())) {
            let (x1, y1) = at(*d);
            let _ = write!(
                h,
                "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{x2:.1}\" y2=\"{:.1}\" stroke=\"#999\"/>",
                x1 + box_w,
                y1 + box_h / 2.0,
                y2 + box_h / 2.0
            );
        }
    }
    for (i, (name, _)) in graph.iter().enumerate() {
        let (x, y) = at(i);
        let detail = by_step.get(name.as_str()).map_or(String::new(), |c| {
            format!(" ({} ran, {} reused)", c.executions, c.reused)
        });
        let _ = write!(
            h,
            "<g><title>{}</title><rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{box_w}\" height=\"{box_h}\" rx=\"4\" fill=\"{}\" fill-opacity=\"0.35\" stroke=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text></g>",
            escape(&format!("{name}{detail}")),
            colour(name),
            colour(name),
            x + 6.0,
            y + 17.0,
            escape(name)
        );
    }
    h.push_str("</svg></section>\n");
}

fn step_table(h: &mut String, steps: &[StepCost]) {
    h.push_str(
        "<section id=\"steps\"><h2>Per step</h2><table class=\"sortable\"><thead><tr>\
         <th>step</th><th>ran</th><th>reused</th><th>failed</th><th>wall (mean)</th><th>wall (max)</th>\
         <th>CPU (mean)</th><th>peak memory</th><th>read</th><th>written</th><th>energy</th>\
         <th>method</th><th>avoided</th></tr></thead><tbody>\n",
    );
    for s in steps {
        let methods = s
            .energy_methods
            .iter()
            .map(|(m, n)| format!("{m} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let bound = if s.executions > 0 && s.peak_memory_upper_bounds == s.executions {
            "≤"
        } else {
            ""
        };
        let cells: [(String, String); 13] = [
            (s.step.clone(), s.step.clone()),
            (s.executions.to_string(), s.executions.to_string()),
            (s.reused.to_string(), s.reused.to_string()),
            (s.failed.to_string(), s.failed.to_string()),
            (s.wall_mean_s.to_string(), secs(s.wall_mean_s)),
            (s.wall_max_s.to_string(), secs(s.wall_max_s)),
            (s.cpu_mean_s.to_string(), secs(s.cpu_mean_s)),
            (
                s.peak_memory_max_bytes.to_string(),
                format!("{bound}{}", mib(s.peak_memory_max_bytes)),
            ),
            (s.read_bytes.to_string(), mib(s.read_bytes)),
            (s.written_bytes.to_string(), mib(s.written_bytes)),
            (s.energy_joules.to_string(), joules(s.energy_joules)),
            (methods.clone(), methods),
            (
                s.avoided_energy_joules.to_string(),
                format!(
                    "{}, {}",
                    secs(s.avoided_wall_s),
                    joules(s.avoided_energy_joules)
                ),
            ),
        ];
        h.push_str("<tr>");
        for (i, (value, text)) in cells.iter().enumerate() {
            let class = if i == 11 { " class=\"m\"" } else { "" };
            let swatch = if i == 0 {
                format!(
                    "<span class=\"swatch\" style=\"background:{}\"></span>",
                    colour(&s.step)
                )
            } else {
                String::new()
            };
            let _ = write!(
                h,
                "<td{class} data-v=\"{}\">{swatch}{}</td>",
                escape(value),
                escape(text)
            );
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody></table></section>\n");
}

fn bars(
    h: &mut String,
    id: &str,
    title: &str,
    steps: &[StepCost],
    value: impl Fn(&StepCost) -> f64,
    label: impl Fn(f64) -> String,
) {
    let shown: Vec<&StepCost> = steps.iter().filter(|s| s.executions > 0).collect();
    let _ = write!(h, "<section id=\"{id}\"><h2>{}</h2>", escape(title));
    if shown.is_empty() {
        h.push_str("<p class=\"note\">Nothing was executed in this run.</p></section>\n");
        return;
    }
    let max = shown
        .iter()
        .map(|s| value(s))
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let (row, left, width) = (22.0, 180.0, 1000.0);
    let height = shown.len() as f64 * row + 6.0;
    let _ = write!(
        h,
        "<svg role=\"img\" aria-label=\"{}\" viewBox=\"0 0 {width} {height}\" width=\"100%\">",
        escape(title)
    );
    for (i, s) in shown.iter().enumerate() {
        let y = i as f64 * row + 3.0;
        let w = (value(s) / max) * (width - left - 120.0);
        let _ = write!(
            h,
            "<text x=\"4\" y=\"{:.1}\">{}</text><rect x=\"{left}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            y + 13.0,
            escape(&s.step),
            w.max(1.0),
            row - 6.0,
            colour(&s.step),
            left + w.max(1.0) + 6.0,
            y + 13.0,
            escape(&label(value(s)))
        );
    }
    h.push_str("</svg></section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("a<b & \"c\" 'd'>"),
            "a&lt;b &amp; &quot;c&quot; &#39;d&#39;&gt;"
        );
    }

    #[test]
    fn executions_that_overlap_go_on_separate_lanes() {
        let run = |id, start, end| RunRow {
            id,
            started_ms: start,
            finished_ms: end,
            ..crate::advice::test_run(0, 0, 0)
        };
        let runs = [run(1, 0, 10), run(2, 5, 15), run(3, 10, 20), run(4, 16, 30)];
        assert_eq!(lanes(&runs), [0, 1, 0, 1]);
    }
}
