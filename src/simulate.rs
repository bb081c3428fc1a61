//! `mustbuild simulate`: a cold run replayed on N cores without running
//! anything (`mustbuild_engine::simulate`), its makespan against the lower
//! bound; this module only reads the pipeline and words the answer.

use crate::exit;
use mustbuild_store::LocalStore;
use std::io::Write as _;
use std::path::{Path, PathBuf};

pub fn simulate(
    pipeline: &Path,
    targets: &[String],
    cores: Option<usize>,
    store: Option<PathBuf>,
    json: bool,
) -> u8 {
    let (wf, instances, selected) = match crate::load_targets(pipeline, targets) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    // No store yet: nothing has run, and durations come from declarations.
    let root = store.unwrap_or_else(LocalStore::default_location);
    let history = match root.exists() {
        true => match LocalStore::open(&root) {
            Ok(s) => Some(s),
            Err(e) => {
                tell!("error: cannot open the store at {}: {e}", root.display());
                return exit::ENVIRONMENT;
            }
        },
        false => None,
    };
    let cores =
        cores.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let s = mustbuild_engine::simulate::simulate(
        &wf,
        &instances,
        history.as_ref(),
        selected.as_deref(),
        cores,
    );
    if json {
        outln!("{}", serde_json::to_string(&s).unwrap_or_default());
        return exit::OK;
    }
    outln!(
        "{} instances on {} cores, in upward-rank order",
        s.instances,
        s.cores
    );
    outln!(
        "makespan       {}  ({:.2} × the lower bound)",
        seconds(s.makespan),
        if s.lower_bound > 0.0 {
            s.makespan / s.lower_bound
        } else {
            1.0
        }
    );
    outln!(
        "lower bound    {}  = max(critical path {}, work {} / {} cores)",
        seconds(s.lower_bound),
        seconds(s.critical_path),
        seconds(s.work),
        s.cores
    );
    outln!("utilisation    {:.0}%", s.utilisation * 100.0);
    outln!(
        "durations      {} steps from history, {} declared (`time`), {} taken as typical",
        s.predicted_from_history,
        s.predicted_from_declarations,
        s.predicted_as_typical
    );
    exit::OK
}

/// Seconds as people read them: `12.3 s`, `4 min 05 s`, `2 h 03 min`.
fn seconds(s: f64) -> String {
    let whole = s.round() as u64;
    match whole {
        _ if s < 60.0 => format!("{s:.1} s"),
        _ if whole < 3600 => format!("{} min {:02} s", whole / 60, whole % 60),
        _ => format!("{} h {:02} min", whole / 3600, whole % 3600 / 60),
    }
}
