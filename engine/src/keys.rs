//! Derivation keys: what an instance's result depends on, by content.
//!
//! The key material of an instance (a map, encoded canonically by
//! `mustbuild_store::KeyMaterial`, version 1 of these fields):
//!
//! ```text
//! "engine"   I 1                                  the version of these fields
//! "shell"    T "bash -e -o pipefail -c"
//! "command"  T the command with placeholders filled in
//! "env"      M name → T value                     pipeline env, then step env
//! "tools"    M name → H digest of the resolved executable
//! "params"   M name → T value                     the params the step uses
//! "inputs"   M input name → L of M { "path" T, "digest" H, "kind" T file|dir }
//! "outputs"  M output name → T file|dir
//! ```
//!
//! Two more fields appear only in the keys of steps that declare them (so the
//! keys of every other step are what they were before them):
//!
//! ```text
//! "sandbox_read" L of T folder      `sandbox { read … }`, the pipeline's and the
//!                                     step's, sorted, each once: as paths
//! "impure"       L of T reason      `network #true` gives "network": the result
//!                                     may depend on more than this key
//! ```
//!
//! Not in the key: the step's name, resources, the executor, timestamps. An input
//! produced by another step enters by the digest of that output, so a step that
//! reran and produced the same bytes changes nothing downstream (early cutoff).

use crate::command::render_command;
use crate::instantiate::{FileRef, InstanceId, Instances};
use mustbuild_lang::model::{Part, PathKind, Workflow};
use mustbuild_store::{Digest, Field, KeyMaterial, LocalStore, StoreError};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The version of the field set above; bumping it changes every key.
pub const KEY_FIELDS_VERSION: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("tool `{0}` is not on PATH")]
    ToolNotFound(String),
    #[error("input `{input}` of step `{step}`: {source}")]
    Input {
        step: String,
        input: String,
        #[source]
        source: StoreError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A tool's identity: where it resolves and the digest of that file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolIdentity {
    pub path: PathBuf,
    pub digest: Digest,
}

/// Finds `name` on `path_var` (or takes an absolute path) and hashes the file it
/// resolves to (symbolic links followed: `python3` → `python3.11`).
pub fn resolve_tool(
    store: &LocalStore,
    name: &str,
    path_var: &str,
) -> Result<ToolIdentity, KeyError> {
    let path =
        locate_tool(name, path_var).ok_or_else(|| KeyError::ToolNotFound(name.to_string()))?;
    let (digest, _, _) = store.file_digest(&path)?;
    Ok(ToolIdentity { path, digest })
}

/// The executable file `name` resolves to on `path_var`, symbolic links followed.
pub fn locate_tool(name: &str, path_var: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let candidates: Vec<PathBuf> = if name.starts_with('/') {
        vec![PathBuf::from(name)]
    } else {
        std::env::split_paths(path_var)
            .map(|d| d.join(name))
            .collect()
    };
    candidates.into_iter().find_map(|c| {
        let meta = std::fs::metadata(&c).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0)
            .then(|| std::fs::canonicalize(&c).unwrap_or(c))
    })
}

/// The files an instance's key material reads: (path as written in the key,
/// digest, whether a folder).
pub fn input_digests(m: &KeyMaterial) -> Vec<(&str, Digest, bool)> {
    inputs_by_name(m).flat_map(|(_, files)| files).collect()
}

/// Each input of a key material, by name, with its files (as `input_digests`).
pub fn inputs_by_name(
    m: &KeyMaterial,
) -> impl Iterator<Item = (&str, impl Iterator<Item = (&str, Digest, bool)>)> {
    let inputs = match m.fields.get("inputs") {
        Some(Field::Map(inputs)) => Some(inputs),
        _ => None,
    };
    inputs.into_iter().flatten().map(|(name, list)| {
        let files = match list {
            Field::List(files) => files.as_slice(),
            _ => &[],
        };
        let entries = files.iter().filter_map(|f| {
            let Field::Map(entry) = f else { return None };
            match (entry.get("path"), entry.get("digest"), entry.get("kind")) {
                (Some(Field::Text(path)), Some(Field::Digest(d)), Some(Field::Text(kind))) => {
                    Some((path.as_str(), *d, kind == "dir"))
                }
                _ => None,
            }
        });
        (name.as_str(), entries)
    })
}

/// The identity of every tool the pipeline and its steps declare.
pub fn resolve_tools(
    wf: &Workflow,
    store: &LocalStore,
    path_var: &str,
) -> Result<BTreeMap<String, ToolIdentity>, KeyError> {
    let mut tools = BTreeMap::new();
    for t in wf
        .tools
        .iter()
        .chain(wf.steps.iter().flat_map(|s| s.tools.iter()))
    {
        if !tools.contains_key(t.name.as_str()) {
            tools.insert(t.name.to_string(), resolve_tool(store, &t.name, path_var)?);
        }
    }
    Ok(tools)
}

/// Why a key cannot cover everything its result depends on (its `impure`
/// field: `network`), empty for a pure step.
pub fn impurities(m: &KeyMaterial) -> Vec<String> {
    match m.fields.get("impure") {
        Some(Field::List(reasons)) => (reasons.iter())
            .filter_map(|r| match r {
                Field::Text(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Everything the key of an instance is computed from besides the instance itself.
pub struct KeyContext<'a> {
    pub wf: &'a Workflow,
    pub instances: &'a Instances,
    pub store: &'a LocalStore,
    /// The pipeline's folder: source paths are relative to it.
    pub root: &'a Path,
    pub tools: &'a BTreeMap<String, ToolIdentity>,
    /// The digest of output `output` of an upstream instance, once it is realised.
    pub upstream: &'a dyn Fn(InstanceId, usize) -> Option<Digest>,
}

impl std::fmt::Debug for KeyContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyContext")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn text(s: impl Into<String>) -> Field {
    Field::Text(s.into())
}

/// The key material of an instance given the output digests known so far (per
/// instance, per output), or `None` while one it reads is not known.
pub fn key_from_outputs(
    wf: &Workflow,
    instances: &Instances,
    store: &LocalStore,
    tools: &BTreeMap<String, ToolIdentity>,
    outputs: &[Option<Vec<Digest>>],
    id: InstanceId,
) -> Result<Option<KeyMaterial>, KeyError> {
    let upstream = |u: InstanceId, o: usize| outputs[u.index()].as_ref().map(|d| d[o]);
    let cx = KeyContext {
        wf,
        instances,
        store,
        root: &wf.root,
        tools,
        upstream: &upstream,
    };
    key_material(&cx, id)
}

/// The key material of an instance, or `None` while an upstream output is not known.
pub fn key_material(cx: &KeyContext<'_>, id: InstanceId) -> Result<Option<KeyMaterial>, KeyError> {
    let inst = cx.instances.get(id);
    let step = cx.wf.step(inst.step);
    let mut m = KeyMaterial::default();
    m.insert("engine", Field::Integer(KEY_FIELDS_VERSION));
    m.insert("shell", text("bash -e -o pipefail -c"));
    m.insert("command", text(render_command(cx.wf, cx.instances, id)));
    let env: BTreeMap<String, Field> = cx
        .wf
        .env
        .iter()
        .chain(&step.env)
        .map(|e| (e.name.to_string(), text(e.value.clone())))
        .collect();
    m.insert("env", Field::Map(env));
    let mut tools = BTreeMap::new();
    for t in cx.wf.tools.iter().chain(&step.tools) {
        let identity = cx
            .tools
            .get(t.name.as_str())
            .ok_or_else(|| KeyError::ToolNotFound(t.name.to_string()))?;
        tools.insert(t.name.to_string(), Field::Digest(identity.digest));
    }
    m.insert("tools", Field::Map(tools));
    let params: BTreeMap<String, Field> = step
        .run
        .parts
        .iter()
        .chain(step.outputs.iter().flat_map(|o| o.path.parts.iter()))
        .filter_map(|p| match p {
            Part::Param(p) => Some(cx.wf.param(*p)),
            _ => None,
        })
        .map(|p| (p.name.to_string(), text(p.value.clone())))
        .collect();
    m.insert("params", Field::Map(params));
    let mut inputs = BTreeMap::new();
    for (decl, files) in step.inputs.iter().zip(&inst.inputs) {
        let mut list = Vec::with_capacity(files.len());
        for f in files {
            let (path, digest, is_dir) = match f {
                FileRef::Source(p) => {
                    let (d, _, is_dir) =
                        cx.store.path_digest(&cx.root.join(p)).map_err(|source| {
                            KeyError::Input {
                                step: step.name.to_string(),
                                input: decl.name.to_string(),
                                source,
                            }
                        })?;
                    (p.clone(), d, is_dir)
                }
                FileRef::Output { instance, output } => {
                    let Some(d) = (cx.upstream)(*instance, *output) else {
                        return Ok(None);
                    };
                    let up = cx.instances.get(*instance);
                    let kind = cx.wf.step(up.step).outputs[*output].kind;
                    (up.outputs[*output].clone(), d, kind == PathKind::Dir)
                }
            };
            let mut entry = BTreeMap::new();
            entry.insert("path".to_string(), text(path));
            entry.insert("digest".to_string(), Field::Digest(digest));
            entry.insert(
                "kind".to_string(),
                text(if is_dir { "dir" } else { "file" }),
            );
            list.push(Field::Map(entry));
        }
        inputs.insert(decl.name.to_string(), Field::List(list));
    }
    m.insert("inputs", Field::Map(inputs));
    let outputs: BTreeMap<String, Field> = step
        .outputs
        .iter()
        .map(|o| {
            (
                o.name.to_string(),
                text(if o.kind == PathKind::Dir {
                    "dir"
                } else {
                    "file"
                }),
            )
        })
        .collect();
    m.insert("outputs", Field::Map(outputs));
    let reads: BTreeSet<&str> = cx.wf.sandbox_reads(step).collect();
    if !reads.is_empty() {
        m.insert(
            "sandbox_read",
            Field::List(reads.into_iter().map(text).collect()),
        );
    }
    if step.network {
        m.insert("impure", Field::List(vec![text("network")]));
    }
    Ok(Some(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instantiate::instantiate;
    use mustbuild_lang::{Diagnostics, RealFiles, expand, load};

    struct Fixture {
        _tmp: tempfile::TempDir,
        root: PathBuf,
        store: LocalStore,
    }

    fn fixture(pipeline: &str, files: &[(&str, &str)]) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("p");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("pipeline.kdl"), pipeline).unwrap();
        for (p, c) in files {
            let path = root.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, c).unwrap();
        }
        let store = LocalStore::open(tmp.path().join("store")).unwrap();
        Fixture {
            _tmp: tmp,
            root,
            store,
        }
    }

    /// The keys of every instance whose upstream outputs `known` gives.
    fn keys(
        f: &Fixture,
        known: &dyn Fn(InstanceId, usize) -> Option<Digest>,
    ) -> Vec<Option<Digest>> {
        let loaded = load(&f.root.join("pipeline.kdl"));
        let wf = loaded.workflow.expect("valid");
        let e = expand(&wf, &RealFiles, &mut Diagnostics::default());
        let inst = instantiate(&wf, &e);
        let mut tools = BTreeMap::new();
        for t in &wf.tools {
            tools.insert(
                t.name.to_string(),
                resolve_tool(&f.store, &t.name, &std::env::var("PATH").unwrap()).unwrap(),
            );
        }
        let cx = KeyContext {
            wf: &wf,
            instances: &inst,
            store: &f.store,
            root: &f.root,
            tools: &tools,
            upstream: known,
        };
        (0..inst.all.len() as u32)
            .map(|i| key_material(&cx, InstanceId(i)).unwrap().map(|m| m.key()))
            .collect()
    }

    const PIPELINE: &str = r#"
pipeline "k"
param n 3
input data "data.csv"
tool sh
env LC_ALL "C"
step head {
    in d=data
    out o="head.csv"
    run "head -n {param.n} {in.d} > {out.o}"
}
step count {
    in h=head.o
    out c="count.txt"
    run "wc -l < {in.h} > {out.c}"
}
"#;

    #[test]
    fn keys_follow_content_not_time_or_names() {
        let f = fixture(PIPELINE, &[("data.csv", "a\nb\nc\nd\n")]);
        let none = |_: InstanceId, _: usize| None;
        let first = keys(&f, &none);
        assert!(
            first[0].is_some() && first[1].is_none(),
            "count waits for head's output"
        );
        // Same content, new mtime: same key.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(f.root.join("data.csv"), "a\nb\nc\nd\n").unwrap();
        assert_eq!(keys(&f, &none)[0], first[0]);
        // One byte changed: another key.
        std::fs::write(f.root.join("data.csv"), "a\nb\nc\ne\n").unwrap();
        assert_ne!(keys(&f, &none)[0], first[0]);
        // A param changed: another key.
        std::fs::write(
            f.root.join("pipeline.kdl"),
            PIPELINE.replace("param n 3", "param n 2"),
        )
        .unwrap();
        assert_ne!(keys(&f, &none)[0], first[0]);
        // A renamed step: the same key.
        std::fs::write(
            f.root.join("pipeline.kdl"),
            PIPELINE
                .replace("step head", "step first_lines")
                .replace("head.o", "first_lines.o"),
        )
        .unwrap();
        std::fs::write(f.root.join("data.csv"), "a\nb\nc\nd\n").unwrap();
        assert_eq!(keys(&f, &none)[0], first[0]);
    }

    #[test]
    fn downstream_keys_depend_on_upstream_output_digests_only() {
        let f = fixture(PIPELINE, &[("data.csv", "a\nb\nc\nd\n")]);
        let same = |_: InstanceId, _: usize| Some(Digest::of(b"a\nb\nc\n"));
        let other = |_: InstanceId, _: usize| Some(Digest::of(b"x\ny\nz\n"));
        let k1 = keys(&f, &same)[1];
        assert!(k1.is_some());
        // Early cutoff: head's inputs changed, its output did not: count's key stays.
        std::fs::write(f.root.join("data.csv"), "a\nb\nc\nzzz\n").unwrap();
        assert_eq!(keys(&f, &same)[1], k1);
        assert_ne!(keys(&f, &other)[1], k1);
    }

    #[test]
    fn network_and_declared_reads_enter_the_key_and_turning_the_sandbox_off_does_not() {
        let f = fixture(PIPELINE, &[("data.csv", "a\nb\nc\nd\n")]);
        let none = |_: InstanceId, _: usize| None;
        let plain = keys(&f, &none)[0];
        let with = |lines: &str| {
            let text = PIPELINE.replace("run \"head -n", &format!("{lines}\n    run \"head -n"));
            std::fs::write(f.root.join("pipeline.kdl"), text).unwrap();
            keys(&f, &none)[0]
        };
        assert_eq!(with("sandbox #false"), plain);
        assert_eq!(with("network #false"), plain);
        let network = with("network #true");
        let read = with("sandbox { read \"/cvmfs\" }");
        assert!(network != plain && read != plain && network != read);
        // The same folders, declared in another order or at the top: the same key.
        assert_eq!(
            with("sandbox { read \"/cvmfs\" \"/refs\" }"),
            with("sandbox { read \"/refs\" \"/cvmfs\" }")
        );
        let text = PIPELINE.replace("step head", "sandbox { read \"/cvmfs\" }\nstep head");
        std::fs::write(f.root.join("pipeline.kdl"), text).unwrap();
        assert_eq!(keys(&f, &none)[0], read);
    }

    #[test]
    fn a_missing_tool_is_an_error() {
        let f = fixture(PIPELINE, &[]);
        assert!(matches!(
            resolve_tool(&f.store, "surely-not-a-command-xyz", "/usr/bin:/bin"),
            Err(KeyError::ToolNotFound(_))
        ));
        let sh = resolve_tool(&f.store, "sh", "/usr/bin:/bin").unwrap();
        assert!(sh.path.is_absolute());
    }
}
