//! What to tell a user whose step the sandbox refused: for each path its log
//! names, the line to add to the pipeline.

use std::path::Path;

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
        return format!(
            "declare it as an input: in x=(file)\"{}\" (its content then enters the key)",
            relative.display()
        );
    }
    match std::fs::metadata(p) {
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
}
