//! What to tell a user whose step the sandbox refused: for each path its log
//! names, the line to add to the pipeline.

use mustbuild_executors::sandbox::Sandbox;
use std::path::{Component, Path, PathBuf};

/// A path a step needed beyond what its sandbox allows, found by
/// `--sandbox-report`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Need {
    pub(crate) path: PathBuf,
    pub(crate) write: bool,
}

/// What `--sandbox-report` found for one step: what it needed, and how it
/// ended once all of that was allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) needs: Vec<Need>,
    pub(crate) then_succeeded: bool,
}

/// Allows `sandbox` what it refused at `refused` (as the step's log names it,
/// relative to the step's folder `dir`): to read a path that is there, then,
/// refused again, to write beside it; to write where a path is not there.
/// False when there is nothing more to allow.
pub(crate) fn widen(
    sandbox: &mut Sandbox,
    dir: &Path,
    refused: &str,
    keep_out: &[PathBuf],
    needs: &mut Vec<Need>,
) -> bool {
    let path = lexical(&dir.join(refused));
    let had = |write: bool| needs.iter().any(|n| n.path == path && n.write == write);
    if had(true) {
        return false;
    }
    let write = had(false) || !path.exists();
    if !write {
        sandbox.inputs.push(path.clone());
        needs.push(Need { path, write });
        return true;
    }
    // The nearest folder that is there (writing a file needs its folder),
    // unless that opens `/`, the workspace, the store or the other steps'
    // folders: the need is reported, not granted.
    let start = if path.is_dir() {
        Some(path.as_path())
    } else {
        path.parent()
    };
    let folder = (start.into_iter())
        .flat_map(Path::ancestors)
        .find(|a| a.is_dir())
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    let scratch = dir.parent().unwrap_or(dir);
    let shared = (keep_out.iter().map(PathBuf::as_path).chain([scratch]))
        .any(|k| k.starts_with(&folder) || folder.starts_with(k));
    needs.push(Need { path, write });
    if folder == Path::new("/") || shared {
        return false;
    }
    sandbox.write.push(folder);
    true
}

/// `path` without `.` and `..` (as the kernel would walk it, links aside).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The report for step `step` of what it needed (`--sandbox-report`).
pub(crate) fn report(step: &str, found: &Found, root: &Path) -> String {
    let canonical = std::fs::canonicalize(root).ok();
    let lines: Vec<String> = (found.needs.iter())
        .map(|n| {
            let shown = n.path.display().to_string();
            let fix = if n.write {
                "a step writes only in its own folder (TMPDIR and HOME are in it), and its \
                 declared outputs are kept: write there"
                    .to_string()
            } else {
                fix(&shown, root, canonical.as_deref())
            };
            format!("{} {shown}: {fix}", if n.write { "write" } else { "read " })
        })
        .collect();
    let then = if found.then_succeeded {
        "with all of it allowed, it succeeds"
    } else {
        "with all of it allowed, it still fails (see its log)"
    };
    format!(
        "sandbox report: `{step}` needs what its sandbox refuses ({then}; nothing of it was \
         stored):\n  {}",
        lines.join("\n  ")
    )
}

/// The warning for step `step`, whose sandbox refused `refused` (as its log
/// names them); `root` is the pipeline's folder, absolute.
pub(crate) fn advice(step: &str, refused: &[String], root: &Path) -> String {
    let canonical = std::fs::canonicalize(root).ok();
    let lines: Vec<String> = refused
        .iter()
        .map(|p| format!("{p}: {}", fix(p, root, canonical.as_deref())))
        .collect();
    format!(
        "`{step}` ran sandboxed, which refused {}; declare what it reads (or run it \
         unsandboxed: `sandbox #false` in the step, or --no-sandbox):\n  {}",
        refused.join(", "),
        lines.join("\n  ")
    )
}

/// The line that lets a step read `path`, or what to do instead.
fn fix(path: &str, root: &Path, canonical: Option<&Path>) -> String {
    let p = Path::new(path);
    if !p.is_absolute() {
        return "a step's inputs are in its own folder, at their paths in the workspace: \
                declare the file as an input (in x=(file)\"path/in/workspace\") and read it there"
            .to_string();
    }
    let within = [Some(root), canonical]
        .into_iter()
        .flatten()
        .find_map(|r| p.strip_prefix(r).ok());
    if let Some(relative) = within {
        let kind = if p.is_dir() { "dir" } else { "file" };
        return format!(
            "declare it as an input: in x=({kind})\"{}\" (its content then enters the key)",
            relative.display()
        );
    }
    let holds_root = [Some(root), canonical]
        .into_iter()
        .flatten()
        .any(|r| r.starts_with(p));
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() && holds_root => "it holds the pipeline's folder, which no step \
            may read whole: declare the files it reads there as inputs"
            .to_string(),
        Ok(m) if m.is_dir() => format!("add `sandbox {{ read \"{path}\" }}` to the step"),
        Ok(_) => {
            let folder = p.parent().map_or("/".into(), |f| f.display().to_string());
            format!(
                "declare it as an input (in x=(file)\"{path}\"), or its folder as read \
                 (`sandbox {{ read \"{folder}\" }}`)"
            )
        }
        Err(_) => "nothing is there: a step writes only in its own folder (TMPDIR and \
                   HOME are in it), and its declared outputs are kept"
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refused_path_gets_the_line_that_would_allow_it() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("w");
        std::fs::create_dir_all(root.join("data")).unwrap();
        let refs = tmp.path().join("refs");
        std::fs::create_dir(&refs).unwrap();
        std::fs::write(refs.join("genome.fa"), ">").unwrap();
        let workspace_file = root.join("data/secret.txt").display().to_string();
        let refused = [
            workspace_file,
            refs.display().to_string(),
            refs.join("genome.fa").display().to_string(),
            "/nonexistent/out.txt".to_string(),
            "../../data/x.csv".to_string(),
        ];
        let text = advice("align", &refused, &root);
        assert!(text.starts_with("`align` ran sandboxed, which refused "));
        assert!(text.contains("in x=(file)\"data/secret.txt\""), "{text}");
        assert!(
            text.contains(&format!("`sandbox {{ read \"{}\" }}`", refs.display())),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "in x=(file)\"{}\"",
                refs.join("genome.fa").display()
            )),
            "{text}"
        );
        assert!(text.contains("writes only in its own folder"), "{text}");
        assert!(text.contains("at their paths in the workspace"), "{text}");
    }

    #[test]
    fn widening_allows_a_read_then_a_write_and_then_nothing_more() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store/scratch/1");
        std::fs::create_dir_all(&dir).unwrap();
        let elsewhere = tmp.path().join("data");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("data.csv"), "x").unwrap();
        let keep_out = [tmp.path().join("w"), tmp.path().join("store")];
        let mut sandbox = Sandbox::default();
        let mut needs = Vec::new();
        let mut widen = |refused: &str, sandbox: &mut Sandbox| {
            widen(sandbox, &dir, refused, &keep_out, &mut needs)
        };
        // `../../../data/data.csv` from the step's folder: read where it is.
        assert!(widen("../../../data/data.csv", &mut sandbox));
        let data = elsewhere.join("data.csv");
        assert_eq!(sandbox.inputs, std::slice::from_ref(&data));
        // Refused again: it writes it; its folder becomes writable.
        assert!(widen(&data.display().to_string(), &mut sandbox));
        assert_eq!(sandbox.write, std::slice::from_ref(&elsewhere));
        assert!(!widen("../../../data/data.csv", &mut sandbox));
        // A file that is not there: its nearest folder that is.
        let new = elsewhere.join("made/deep/out.txt");
        assert!(widen(&new.display().to_string(), &mut sandbox));
        assert_eq!(sandbox.write.len(), 2);
        // Never the workspace, `/`, or the folder of every step's folder:
        // reported, not allowed.
        std::fs::create_dir_all(tmp.path().join("w/results")).unwrap();
        let in_workspace = tmp.path().join("w/results/x.txt").display().to_string();
        for refused in [in_workspace.as_str(), "/nonexistent/x", "../other/x"] {
            assert!(!widen(refused, &mut sandbox));
        }
        assert_eq!(sandbox.write.len(), 2);
        let found = Found {
            needs,
            then_succeeded: true,
        };
        assert_eq!(found.needs.len(), 6);
        let text = report("s", &found, &tmp.path().join("w"));
        assert!(
            text.contains(&format!("read  {}", data.display())),
            "{text}"
        );
        assert!(text.contains(&format!("write {}", new.display())), "{text}");
        assert!(text.contains("write /nonexistent/x"), "{text}");
        assert!(text.contains("it succeeds"), "{text}");
    }
}
