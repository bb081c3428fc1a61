//! `mustbuild why`, `show`, `log` and `runs`: what the store remembers of runs,
//! rendered for people (or as JSON). The answers come from
//! `mustbuild_engine::provenance`; this module only words and lays them out.

use crate::exit;
use crate::render::plural;
use mustbuild_engine::provenance::{
    self, Cause, Content, Derivation, Explanation, ProvenanceError, Resolved, RootCause, Status,
    Target, WhyReport,
};
use mustbuild_store::{Digest, LocalStore, ObjectData};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

/// What every provenance command takes.
#[derive(clap::Args)]
pub struct Common {
    /// The store [default: $MUSTBUILD_STORE, else $XDG_CACHE_HOME/mustbuild/store,
    /// else ~/.cache/mustbuild/store].
    #[arg(long, value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// Print the answer as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn open(location: Option<PathBuf>) -> Result<LocalStore, u8> {
    let root = location.unwrap_or_else(LocalStore::default_location);
    if !root.exists() {
        tell!(
            "error: there is no store at {} (nothing has run with it yet)",
            root.display()
        );
        return Err(exit::ENVIRONMENT);
    }
    LocalStore::open(&root).map_err(|e| {
        tell!("error: cannot open the store at {}: {e}", root.display());
        exit::ENVIRONMENT
    })
}

fn failed(e: &ProvenanceError) -> u8 {
    tell!("error: {e}");
    if let Some(hint) = e.hint() {
        tell!("  hint: {hint}");
    }
    match e {
        ProvenanceError::Store(_) => exit::ENVIRONMENT,
        _ => exit::INVALID,
    }
}

fn resolve(store: &LocalStore, target: &str, run: Option<i64>) -> Result<Resolved, u8> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let parsed = Target::parse(target, &cwd);
    provenance::resolve(store, &parsed, run, &cwd).map_err(|e| failed(&e))
}

/// The store, and the target found in it (or the exit code, the error told).
fn open_and_resolve(
    location: Option<PathBuf>,
    target: &str,
    run: Option<i64>,
) -> Result<(LocalStore, Resolved), u8> {
    let store = open(location)?;
    let resolved = resolve(&store, target, run)?;
    Ok((store, resolved))
}

/// A digest as people read it: its first 12 hex digits.
fn short(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}

fn content(c: &Content) -> String {
    match c.size {
        Some(n) => format!("{} ({})", short(&c.digest), crate::bytes(n)),
        None => short(&c.digest).to_string(),
    }
}

fn value(v: &Option<String>) -> String {
    match v {
        Some(v) => format!("`{v}`"),
        None => "(none)".to_string(),
    }
}

/// A cause in one line (a command diff adds its lines below, indented by `pad`).
fn cause_text(c: &Cause, step: &str, values: &[String], pad: &str) -> String {
    match c {
        Cause::NeverBuilt => {
            format!(
                "never built: no earlier run of this pipeline the store remembers had step `{step}`"
            )
        }
        Cause::NewValue => format!(
            "a new fan-out value: step `{step}` ran before, never for [{}]",
            values.join(", ")
        ),
        Cause::Forced => format!("forced (--force {step})"),
        Cause::FailedLastTime {
            run,
            outcome,
            exit_code,
        } => {
            let how = match exit_code {
                Some(code) => format!("exit code {code}"),
                None => outcome.clone(),
            };
            match run {
                Some(r) => format!("failed last time (run {r}: {how}); what it reads is unchanged"),
                None => format!("failed last time ({how}); what it reads is unchanged"),
            }
        }
        Cause::Interrupted { run } => {
            format!("run {run} meant to run it and never recorded its end (interrupted)")
        }
        Cause::Collected { made_in } => match made_in {
            Some(r) => format!(
                "its result, made in run {r}, is no longer in the store (garbage-collected); \
                 what it reads is unchanged"
            ),
            None => "its earlier result is no longer in the store (garbage-collected)".to_string(),
        },
        Cause::PreviousGone { run } => format!(
            "its key changed since run {run}, but the store no longer has that key's material \
             (garbage-collected): nothing to compare with"
        ),
        Cause::Source {
            input,
            path,
            before,
            after,
        } => format!(
            "source file `{path}` (input `{input}`) changed: {} → {}",
            content(before),
            content(after)
        ),
        Cause::Upstream {
            input,
            path,
            before,
            after,
            producer,
            explained_as,
        } => {
            let by = match (producer, explained_as) {
                (Some(p), _) => provenance::label(&p.step, &p.values),
                (None, Some(l)) => format!("{l} (above)"),
                (None, None) => "another step".to_string(),
            };
            format!(
                "`{path}` (input `{input}`) changed: {} → {}, made by {by}",
                content(before),
                content(after)
            )
        }
        Cause::InputFiles {
            input,
            added,
            removed,
        } => {
            let mut parts: Vec<String> = added.iter().map(|p| format!("+ `{p}`")).collect();
            parts.extend(removed.iter().map(|p| format!("- `{p}`")));
            format!("input `{input}` reads other files: {}", parts.join(", "))
        }
        Cause::Param {
            name,
            before,
            after,
            override_before,
            override_after,
        } => {
            let how = match (override_before, override_after) {
                (false, true) => " (set by --param)",
                (true, false) => " (--param no longer given)",
                (true, true) => " (by --param)",
                (false, false) => "",
            };
            format!("param `{name}`: {} → {}{how}", value(before), value(after))
        }
        Cause::Command { diff, .. } => {
            let mut s = "the command changed:".to_string();
            for line in diff {
                let _ = write!(s, "\n{pad}    {line}");
            }
            s
        }
        Cause::Env {
            name,
            before,
            after,
        } => format!("env `{name}`: {} → {}", value(before), value(after)),
        Cause::Tool {
            name,
            before,
            after,
        } => {
            let side = |t: &Option<provenance::ToolSide>| match t {
                Some(t) => match &t.path {
                    Some(p) => format!("{p} {}", short(&t.digest)),
                    None => short(&t.digest).to_string(),
                },
                None => "(not declared)".to_string(),
            };
            format!("tool `{name}`: {} → {}", side(before), side(after))
        }
        Cause::Definition {
            field,
            before,
            after,
        } => format!(
            "`{field}` of the step: {} → {}",
            value(before),
            value(after)
        ),
        Cause::PipelineText { files } => {
            format!(
                "written in pipeline text that changed: {}",
                files.join(", ")
            )
        }
        Cause::SameKeyOtherBytes => "ran again with an unchanged key and made other bytes \
             (its step is not reproducible, or its result was replaced)"
            .to_string(),
    }
}

fn status_text(e: &Explanation) -> String {
    let what = match e.status {
        Status::Reused => "reused",
        Status::Executed => "executed",
        Status::Failed => "failed",
        Status::NotFinished => "not finished",
    };
    let made = match (&e.status, &e.made_by, &e.fetched) {
        (Status::Reused, Some(m), _) => match m.run {
            Some(r) => format!(" (made in run {r})"),
            None => String::new(),
        },
        (Status::Reused, None, Some(f)) => {
            let when = match f.session {
                Some(s) if s != e.run => format!(" in run {s}"),
                _ => String::new(),
            };
            format!(
                " (fetched from {}{when}, signed by `{}`)",
                f.cache, f.signer
            )
        }
        _ => String::new(),
    };
    format!("{what} in run {}{made}", e.run)
}

fn tree(e: &Explanation, depth: usize, out: &mut String) {
    let pad = "  ".repeat(depth);
    let label = provenance::label(&e.step, &e.values);
    let compared = match e.compared_with_run {
        Some(r) if !e.causes.is_empty() => format!(", compared with run {r}"),
        _ => String::new(),
    };
    let _ = writeln!(out, "{pad}{label}: {}{compared}", status_text(e));
    for c in &e.causes {
        let _ = writeln!(out, "{pad}  {}", cause_text(c, &e.step, &e.values, &pad));
        if let Cause::Upstream {
            producer: Some(p), ..
        } = c
        {
            tree(p, depth + 2, out);
        }
    }
}

fn root_cause_text(r: &RootCause, out: &mut String) {
    let (step, values) = match r.at.split_once('[') {
        Some((s, rest)) => (
            s.to_string(),
            rest.trim_end_matches(']')
                .split(", ")
                .map(str::to_string)
                .collect(),
        ),
        None => (r.at.clone(), Vec::new()),
    };
    let _ = writeln!(
        out,
        "  {}: {}",
        r.at,
        cause_text(&r.cause, &step, &values, "  ")
    );
    if !r.via.is_empty() {
        let _ = writeln!(out, "    reaching it through {}", r.via.join(" → "));
    }
}

pub fn render_why(report: &WhyReport) -> String {
    let mut out = why_text(report);
    let e = &report.explanation;
    let label = provenance::label(&e.step, &e.values);
    if !e.impure.is_empty() {
        let _ = writeln!(
            out,
            "\nnote: {label} is impure ({}): it may use the network (`network #true`), so its key \
             cannot cover what it fetched; a reuse trusts that it would fetch the same. \
             `mustbuild audit` tells whether it reproduces.",
            e.impure.join(", ")
        );
    }
    if e.made_by.as_ref().and_then(|m| m.sandboxed) == Some(false) {
        let _ = writeln!(
            out,
            "\nnote: {label}'s result was made unsandboxed: what it read besides its declared \
             inputs and tools is not in its key."
        );
    }
    if let Some(a) = &report.audit {
        let _ = writeln!(
            out,
            "\naudited {}: {}",
            utc(a.at_ms),
            match a.verdict.as_str() {
                "reproducible" => "reproducible (every output came out the same)",
                "differs" => "NOT reproducible (`mustbuild show` gives the outputs that differ)",
                _ => "the audit could not run it",
            }
        );
    }
    out
}

fn why_text(report: &WhyReport) -> String {
    let e = &report.explanation;
    let label = provenance::label(&e.step, &e.values);
    let mut out = String::new();
    if let Some(same) = report.same_as_run {
        let _ = writeln!(
            out,
            "run {} changed nothing: it used what run {same} left, unchanged.",
            report.run
        );
    }
    if e.causes.is_empty() {
        match e.status {
            Status::Reused => {
                let _ = writeln!(
                    out,
                    "{label}: {}: nothing it reads or runs changed since.",
                    status_text(e)
                );
                if let Some(r) = e.made_by.as_ref().and_then(|m| m.run) {
                    let _ = writeln!(
                        out,
                        "  `mustbuild why {label} --run {r}` tells why it ran then."
                    );
                }
            }
            _ => {
                let _ = writeln!(
                    out,
                    "{label}: {}, for no cause the store can tell.",
                    status_text(e)
                );
            }
        }
        return out;
    }
    let _ = writeln!(
        out,
        "{}:",
        if report.root_causes.len() == 1 {
            "root cause".to_string()
        } else {
            format!("{} root causes", report.root_causes.len())
        }
    );
    for r in &report.root_causes {
        root_cause_text(r, &mut out);
    }
    let _ = writeln!(out, "\nstep by step:");
    tree(e, 1, &mut out);
    out
}

pub fn why(target: &str, run: Option<i64>, common: Common) -> u8 {
    let (store, resolved) = match open_and_resolve(common.store, target, run) {
        Ok(found) => found,
        Err(code) => return code,
    };
    // A long chain of steps recurses as deep: a thread with room for it.
    let answer = std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(1 << 30)
            .spawn_scoped(s, || provenance::why(&store, &resolved))
            .map(|t| t.join())
    });
    let report = match answer {
        Ok(Ok(Ok(r))) => r,
        Ok(Ok(Err(e))) => return failed(&e),
        _ => {
            tell!("error: could not explain `{target}` (out of threads or memory)");
            return exit::ENVIRONMENT;
        }
    };
    if common.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        out!("{}", render_why(&report));
    }
    exit::OK
}

pub fn audit(
    pipeline: &std::path::Path,
    targets: &[String],
    sample: Option<usize>,
    sandbox: bool,
    common: Common,
) -> u8 {
    use mustbuild_engine::audit::{AuditOptions, Finding};
    let (wf, instances, selected) = match crate::load_targets(pipeline, targets) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let wf = &wf;
    let store = match open(common.store) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let cancel = mustbuild_executors::CancelToken::default();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(signal, cancel.flag());
    }
    let options = AuditOptions {
        path_var: std::env::var("PATH")
            .unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_string()),
        selected,
        sample,
        sandbox: sandbox
            && match mustbuild_executors::sandbox::support() {
                Ok(()) => true,
                Err(why) => {
                    tell!("warning: steps run unsandboxed: {why}");
                    false
                }
            },
        cancel: cancel.clone(),
    };
    let json = common.json;
    let result = mustbuild_engine::audit::audit(wf, &instances, &store, &options, &mut |v| {
        if json {
            outln!("{}", serde_json::to_string(v).unwrap_or_default());
            return;
        }
        let mut label = provenance::label(&v.step, &v.values);
        if !v.impure.is_empty() {
            // Its result may follow what it fetched: a difference is no surprise.
            label = format!("{label} (impure: {})", v.impure.join(", "));
        }
        match &v.finding {
            Finding::Reproducible => outln!("reproducible  {label}"),
            Finding::Failed {
                outcome, advice, ..
            } => {
                outln!("failed        {label}: {outcome}");
                if let Some(advice) = advice {
                    outln!("              {}", advice.replace('\n', "\n              "));
                }
            }
            Finding::Differs { outputs } => {
                for o in outputs {
                    outln!(
                        "DIFFERS       {label}: `{}` {} → {}",
                        o.path,
                        short(&o.realised),
                        short(&o.audited)
                    );
                    for l in &o.first_difference {
                        outln!("                {l}");
                    }
                }
            }
        }
    });
    match result {
        Ok(verdicts) => {
            let differs = verdicts
                .iter()
                .filter(|v| !matches!(v.finding, Finding::Reproducible))
                .count();
            if !json {
                outln!(
                    "audited {}: {} reproducible, {differs} not",
                    verdicts.len(),
                    verdicts.len() - differs
                );
            }
            exit::of_work(cancel.is_cancelled(), differs > 0)
        }
        Err(e) => {
            tell!("error: {e}");
            exit::ENVIRONMENT
        }
    }
}

pub fn export_ro_crate(
    run: Option<i64>,
    output: &std::path::Path,
    license: &str,
    common: Common,
) -> u8 {
    let store = match open(common.store) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let run = match run {
        Some(r) => r,
        None => match store.sessions(1) {
            Ok(s) if !s.is_empty() => s[0].id,
            Ok(_) => {
                tell!("error: no runs recorded in this store");
                return exit::INVALID;
            }
            Err(e) => return failed(&e.into()),
        },
    };
    match provenance::ro_crate::export(&store, run, output, license, &utc) {
        Ok(()) => {
            outln!("wrote {}", output.join("ro-crate-metadata.json").display());
            exit::OK
        }
        Err(e) => failed(&e),
    }
}

pub fn depends(from: &str, to: &str, run: Option<i64>, common: Common) -> u8 {
    let store = match open(common.store) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let to = match resolve(&store, to, run) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let from = match resolve(&store, from, Some(to.asked.id)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let answer = match provenance::depends(&store, to.row.session, &from.row, &to.row) {
        Ok(d) => d,
        Err(e) => return failed(&e),
    };
    if common.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
        return exit::OK;
    }
    if answer.paths.is_empty() {
        outln!(
            "{} does not read what {} makes (in run {})",
            answer.to,
            answer.from,
            answer.run
        );
        return exit::INVALID;
    }
    outln!(
        "{} reads what {} makes through {} (run {}):",
        answer.to,
        answer.from,
        plural(answer.paths.len(), "path"),
        answer.run
    );
    for p in &answer.paths {
        outln!("  {}", p.join(" → "));
    }
    if answer.truncated {
        outln!("  … and more");
    }
    exit::OK
}

pub fn show(target: &str, run: Option<i64>, common: Common) -> u8 {
    let (store, resolved) = match open_and_resolve(common.store, target, run) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let d = match provenance::show(&store, &resolved) {
        Ok(d) => d,
        Err(e) => return failed(&e),
    };
    if common.json {
        outln!("{}", serde_json::to_string_pretty(&d).unwrap_or_default());
    } else {
        out!("{}", render_show(&d));
    }
    exit::OK
}

pub fn render_show(d: &Derivation) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} (run {})",
        provenance::label(&d.step, &d.values),
        d.run
    );
    let _ = writeln!(out, "key       {}", d.key);
    if !d.known {
        let _ = writeln!(out, "          (its material is no longer in the store)");
    }
    if let Some(c) = &d.command {
        let mut lines = c.lines();
        let _ = writeln!(out, "command   {}", lines.next().unwrap_or_default());
        for l in lines {
            let _ = writeln!(out, "          {l}");
        }
    }
    for (name, v) in &d.params {
        let _ = writeln!(out, "param     {name} = {v}");
    }
    for (name, v) in &d.env {
        let _ = writeln!(out, "env       {name}={v}");
    }
    for (name, (digest, path)) in &d.tools {
        let _ = writeln!(
            out,
            "tool      {name} {}{}",
            short(digest),
            path.as_ref().map(|p| format!(" {p}")).unwrap_or_default()
        );
    }
    for i in &d.inputs {
        let _ = writeln!(
            out,
            "input     {} {} {}",
            i.input,
            i.path,
            content(&i.content)
        );
    }
    if d.outputs.is_empty() {
        let _ = writeln!(out, "outputs   none in the store (not realised, or gc'd)");
    }
    for o in &d.outputs {
        let _ = writeln!(
            out,
            "output    {} {} {}",
            o.name,
            o.kind,
            content(&o.content)
        );
    }
    match &d.made_by {
        Some(m) => {
            let _ = writeln!(
                out,
                "made by   run {} on {} at {} in {}",
                m.run.map_or("?".to_string(), |r| r.to_string()),
                m.host,
                utc(m.started_ms),
                seconds(m.wall_ms)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "made by   no recorded run (taken from elsewhere, or not made)"
            );
        }
    }
    if let Some(a) = &d.audit {
        let _ = writeln!(out, "audit     {} ({})", a.verdict, utc(a.at_ms));
    }
    if d.executions.len() > 1 {
        let _ = writeln!(out, "executed  {}", plural(d.executions.len(), "time"));
    }
    out
}

pub fn log(target: &str, run: Option<i64>, store: Option<PathBuf>) -> u8 {
    let (store, resolved) = match open_and_resolve(store, target, run) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let runs = match store.runs_of(&resolved.row.key) {
        Ok(r) => r,
        Err(e) => return failed(&e.into()),
    };
    let label = provenance::label(
        &resolved.row.step,
        &provenance::values_of(&resolved.row.instance),
    );
    // With --run: that run's last attempt; else the execution whose result is
    // in use, else the last one.
    let chosen = if run.is_some() {
        runs.iter()
            .rev()
            .find(|r| r.session == Some(resolved.row.session))
    } else {
        runs.iter()
            .find(|r| r.outcome == "succeeded")
            .or(runs.last())
    };
    let Some(chosen) = chosen else {
        tell!("error: {label} has no recorded execution (its result came from elsewhere)");
        return exit::INVALID;
    };
    let Some(log) = chosen.log else {
        tell!(
            "{label}: run {} recorded no output",
            chosen.session.map_or("?".into(), |s| s.to_string())
        );
        return exit::OK;
    };
    match read_object(&store, &log) {
        Ok(bytes) => {
            let _ = std::io::stdout().lock().write_all(&bytes);
            exit::OK
        }
        Err(e) => {
            tell!("error: the log of {label} is no longer in the store: {e}");
            exit::ENVIRONMENT
        }
    }
}

fn read_object(store: &LocalStore, d: &Digest) -> Result<Vec<u8>, mustbuild_store::StoreError> {
    match store.object_data(d)? {
        ObjectData::Inline(bytes) => Ok(bytes),
        ObjectData::File(path) => {
            std::fs::read(&path).map_err(|source| mustbuild_store::StoreError::Io {
                action: "read",
                path: path.clone(),
                source,
            })
        }
    }
}

pub fn runs(limit: usize, common: Common) -> u8 {
    let store = match open(common.store) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match runs_table(&store, limit, common.json) {
        Ok(text) => {
            out!("{text}");
            exit::OK
        }
        Err(e) => failed(&e.into()),
    }
}

fn runs_table(
    store: &LocalStore,
    limit: usize,
    json: bool,
) -> Result<String, mustbuild_store::StoreError> {
    let mut out = String::new();
    let mut rows = Vec::new();
    for s in store.sessions(limit)? {
        let info = provenance::RunInfo::parse(s.info.as_deref());
        let (executed, cached, failed) = match s.alias_of {
            Some(of) => {
                let c = store.session_counts(of)?;
                (0, c.reused + c.to_run + c.forced, 0)
            }
            None => {
                let c = store.session_counts(s.id)?;
                (c.succeeded, c.reused, c.failed)
            }
        };
        let pipeline = if info.pipeline_file.is_empty() {
            s.pipeline.clone()
        } else {
            info.pipeline_file.clone()
        };
        let wall = s.finished_ms.map(|f| f - s.started_ms);
        rows.push(serde_json::json!({
            "run": s.id, "pipeline": pipeline, "name": s.pipeline, "started_ms": s.started_ms,
            "finished_ms": s.finished_ms, "executed": executed, "cached": cached, "failed": failed,
            "noop": s.alias_of.is_some(), "same_as_run": s.alias_of, "user": info.user, "host": info.host,
            "params": info.params, "overrides": info.overrides, "targets": info.targets,
            "mustbuild": info.mustbuild,
        }));
        if !json {
            let _ = writeln!(
                out,
                "{:>5}  {}  {:>8}  {:>6}  {:>6}  {:>6}  {}{}",
                s.id,
                utc(s.started_ms),
                wall.map_or("unfinished".to_string(), seconds),
                executed,
                cached,
                failed,
                pipeline,
                if s.alias_of.is_some() { " (no-op)" } else { "" }
            );
        }
    }
    if json {
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        ));
    }
    if rows.is_empty() {
        return Ok("no runs recorded in this store\n".to_string());
    }
    Ok(format!(
        "{:>5}  {:<19}  {:>8}  {:>6}  {:>6}  {:>6}  PIPELINE\n{out}",
        "RUN", "STARTED (UTC)", "WALL", "RAN", "CACHED", "FAILED"
    ))
}

fn seconds(ms: i64) -> String {
    format!("{:.2} s", ms as f64 / 1000.0)
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(super::utc(1_796_601_599_000), "2026-12-06 23:59:59");
    }
}
