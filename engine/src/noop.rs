//! Telling a no-op rerun without computing a key: what ninja does with its log,
//! for content-addressed keys.
//!
//! After a complete run (every instance realised and in the workspace), a record
//! is kept in the store, per pipeline file: the digest of every pipeline file
//! read, the `--param` overrides, `PATH`, the mustbuild executable, what each glob
//! matched, each tool's resolved file, and the identity (device, inode, size,
//! mtime, ctime) of every source file the keys read and every output in the
//! workspace. An identity is recorded only when the store's file-digest cache maps
//! it to the very digest the run used, so the record claims nothing the cache
//! cannot prove (and the cache leaves out identities too recent to trust). Files
//! too recent to trust when the record is written (a run's last outputs) are
//! recorded as fresh, with the digest the run used: the next run reads them
//! instead of trusting their identity, which costs a few small reads there
//! rather than a wait at the end of every run.
//!
//! The next run first checks the record: if every pipeline file has the same
//! content, every glob the same matches, every tool the same file, and every file
//! the same identity, then every key would come out the same and every output is
//! in place: the run is a no-op, and it only records a session that uses the same
//! derivations, provided gc or repair removed nothing since (the store's
//! generation). Anything else, and the run takes the normal path.
//!
//! Pipelines with folder inputs or outputs get no record (a folder's identity
//! does not cover its files); nor do KDL 1.0 files (their text is a translation).

use crate::instantiate::{FileRef, Instances};
use crate::keys::{ToolIdentity, locate_tool};
use mustbuild_lang::model::{InputSource, PathKind, Workflow};
use mustbuild_store::{Digest, Identity, LocalStore, StoreError, identity};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

const MAGIC: &str = "mustbuild-noop 3";

/// The longest a run waits, at its end, for its newest outputs to become old
/// enough to be recorded (50 ms on file systems with fine timestamps).
const MAX_SETTLE_NS: i64 = 200_000_000;

/// Files too new to trust are recorded as fresh, and read again by the next run,
/// up to this many bytes in all; beyond, the run waits for them to settle.
const MAX_FRESH_BYTES: i64 = 64 << 20;

/// Fresh files up to this many bytes in all are checked by reading them, not
/// through the digest cache.
const FRESH_READ_BYTES: i64 = 1 << 20;

/// What a run was asked, besides the pipeline's content.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The pipeline file, absolute and canonical: the record's name.
    pub pipeline: PathBuf,
    /// The pipeline's folder as this run sees it, absolute (not canonical: a
    /// pipeline file reached through a link has its own folder).
    pub root: PathBuf,
    /// `--param` overrides, as given.
    pub overrides: Vec<(String, String)>,
    pub path_var: String,
    /// Every pipeline file read, with the digest of its text; `None` when one was
    /// KDL 1.0 (no record then). Only needed to write a record.
    pub pipeline_files: Option<Vec<(PathBuf, Digest)>>,
    /// What each input's glob matched (empty for other inputs), as the run saw it.
    pub glob_files: Vec<Vec<String>>,
}

impl Request {
    /// The record's name: the pipeline file's path.
    pub fn name(&self) -> String {
        self.pipeline.to_string_lossy().into_owned()
    }
}

/// What a run read, for its record.
#[derive(Debug, Default)]
pub struct Seen {
    /// The digest each input path had when keys were computed (and whether a folder).
    pub inputs: HashMap<String, (Digest, bool)>,
    pub tools: BTreeMap<String, ToolIdentity>,
    /// The store's generation before anything was looked up.
    pub generation: i64,
}

/// A no-op found: the instances it covers (step, fan-out values), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoOp {
    pub session: i64,
    pub instances: Vec<(String, Vec<String>)>,
}

/// One instance as the record has it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Recorded {
    step: String,
    values: Vec<String>,
    key: Digest,
    /// Per declared output, in order.
    outputs: Vec<Digest>,
}

/// A record whose pipeline, parameters, tools and globs are as they were, but
/// some of whose files changed: what the run can take from it ([`Prior::clean`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prior {
    instances: Vec<Recorded>,
    /// Every recorded file: its digest, and whether its identity is unchanged.
    files: HashMap<PathBuf, (Digest, bool)>,
}

/// What the record says of this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Nothing changed: a no-op, already recorded as a session.
    NoOp(NoOp),
    /// Some files changed; the rest of the record holds.
    Partial(Prior),
    /// No record, or one that does not hold.
    None,
}

impl Prior {
    /// For each instance of this run (the same instances as the record's, since
    /// the pipeline and its globs are the same): its recorded key and outputs,
    /// when none of its source files or outputs changed and nothing upstream did.
    /// What a clean instance's keys read: the digest of each source path.
    #[expect(clippy::type_complexity, reason = "two plain lists, per instance")]
    pub fn clean(
        &self,
        wf: &Workflow,
        instances: &Instances,
    ) -> (Vec<Option<(Digest, Vec<Digest>)>>, HashMap<String, Digest>) {
        let n = instances.all.len();
        let root = absolute(&wf.root);
        let mut out: Vec<Option<(Digest, Vec<Digest>)>> = vec![None; n];
        let mut sources = HashMap::new();
        if self.instances.len() != n {
            return (out, sources);
        }
        for (i, inst) in instances.all.iter().enumerate() {
            let r = &self.instances[i];
            if wf.step(inst.step).name != r.step.as_str() || inst.values != r.values {
                return (vec![None; n], HashMap::new());
            }
            let unchanged = |p: &str| self.files.get(&root.join(p)).filter(|f| f.1);
            let mut clean = inst.deps.iter().all(|d| out[d.index()].is_some())
                && inst.outputs.iter().all(|o| unchanged(o).is_some())
                && r.outputs.len() == inst.outputs.len();
            for f in inst.inputs.iter().flatten() {
                if let FileRef::Source(p) = f {
                    match unchanged(p) {
                        Some((digest, _)) => {
                            sources.insert(p.clone(), *digest);
                        }
                        None => clean = false,
                    }
                }
            }
            if clean {
                out[i] = Some((r.key, r.outputs.clone()));
            }
        }
        (out, sources)
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// An identity as the record writes it.
fn parse_identity(s: &str) -> Option<Identity> {
    let mut n = s.split(' ').map(|x| x.parse::<i64>().ok());
    let id = Identity {
        dev: n.next()??,
        ino: n.next()??,
        size: n.next()??,
        mtime_ns: n.next()??,
        ctime_ns: n.next()??,
    };
    n.next().is_none().then_some(id)
}

/// The identity of the running mustbuild (a new build may compute keys otherwise).
fn exe_identity() -> Option<Identity> {
    let exe = std::env::current_exe().ok()?;
    std::fs::metadata(exe).ok().map(|m| identity(&m))
}

fn fmt_identity(i: &Identity) -> String {
    format!(
        "{} {} {} {} {}",
        i.dev, i.ino, i.size, i.mtime_ns, i.ctime_ns
    )
}

fn identity_of(path: &Path) -> Option<Identity> {
    std::fs::metadata(path).ok().map(|m| identity(&m))
}

/// A field fit for the record's tab-separated lines.
fn clean(s: &str) -> bool {
    !s.contains(['\t', '\n', '\r', '\u{1f}'])
}

/// What a complete run leaves for its record.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    pub wf: &'a Workflow,
    pub instances: &'a Instances,
    /// Per instance: its key, and its outputs' digests in declared order.
    pub keys: &'a [Option<Digest>],
    pub outputs: &'a [Option<Vec<Digest>>],
    pub seen: &'a Seen,
}

/// Writes the record of a complete run, when every file's identity is proven;
/// otherwise removes any older record. Whether one was written.
pub fn record(
    store: &LocalStore,
    request: &Request,
    run: Finished<'_>,
    session: i64,
) -> Result<bool, StoreError> {
    let name = request.name();
    let body = match describe(store, request, run)? {
        Some(body) => body,
        None => {
            store.forget_noop_record(&name)?;
            return Ok(false);
        }
    };
    store.save_noop_record(&name, session, run.seen.generation, body.as_bytes())?;
    Ok(true)
}

fn describe(
    store: &LocalStore,
    request: &Request,
    run: Finished<'_>,
) -> Result<Option<String>, StoreError> {
    let Finished {
        wf,
        instances,
        keys,
        outputs,
        seen,
    } = run;
    use std::fmt::Write;
    let Some(pipeline_files) = &request.pipeline_files else {
        return Ok(None);
    };
    let Some(exe) = exe_identity() else {
        return Ok(None);
    };
    // Folder outputs: a folder's identity does not cover its files. Steps with no
    // output: never realised, they run every time.
    if wf
        .steps
        .iter()
        .any(|s| s.outputs.is_empty() || s.outputs.iter().any(|o| o.kind == PathKind::Dir))
        || seen.inputs.values().any(|(_, dir)| *dir)
        || !clean(&request.path_var)
    {
        return Ok(None);
    }
    let mut body = String::new();
    let _ = writeln!(body, "{MAGIC}");
    let _ = writeln!(body, "exe\t{}", fmt_identity(&exe));
    if !clean(&wf.name) {
        return Ok(None);
    }
    let _ = writeln!(body, "name\t{}", wf.name);
    // Absolute paths: the record holds wherever the next run starts from.
    let root = absolute(&wf.root);
    let _ = writeln!(body, "root\t{}", root.display());
    let _ = writeln!(body, "path\t{}", request.path_var);
    for (k, v) in &request.overrides {
        if !clean(k) || !clean(v) {
            return Ok(None);
        }
        let _ = writeln!(body, "param\t{k}\t{v}");
    }
    for (path, digest) in pipeline_files {
        let _ = writeln!(body, "source\t{}\t{}", digest.to_hex(), path.display());
    }
    for (input, files) in wf.inputs.iter().zip(&request.glob_files) {
        if let InputSource::Glob { pattern } = &input.source {
            if !clean(pattern) {
                return Ok(None);
            }
            let _ = writeln!(body, "glob\t{}\t{pattern}", list_digest(files).to_hex());
        }
    }
    // Every file, with the digest the run used; then their identities, proven.
    let mut files: Vec<(PathBuf, Digest)> = Vec::new();
    let mut tools = Vec::new();
    for (name, tool) in &seen.tools {
        tools.push((name, tool));
        files.push((tool.path.clone(), tool.digest));
    }
    let mut listed = std::collections::HashSet::new();
    for (i, inst) in instances.all.iter().enumerate() {
        for f in inst.inputs.iter().flatten() {
            if let FileRef::Source(p) = f
                && listed.insert(p.as_str())
            {
                let Some((digest, _)) = seen.inputs.get(p) else {
                    return Ok(None);
                };
                files.push((root.join(p), *digest));
            }
        }
        let Some(digests) = &outputs[i] else {
            return Ok(None);
        };
        for (path, digest) in inst.outputs.iter().zip(digests) {
            files.push((root.join(path), *digest));
        }
    }
    let Some(ids) = files
        .iter()
        .map(|(p, _)| identity_of(p))
        .collect::<Option<Vec<Identity>>>()
    else {
        return Ok(None);
    };
    let mut cached = store.cached_digests(&ids)?;
    // Files not hashed yet (outputs copied in by this run) are hashed now, once.
    // Those written too recently for the cache to trust (the last outputs of a
    // run, typically) are recorded as fresh: the next run reads them again rather
    // than trust their identity. Unless they are big: then a short wait costs less.
    let mut again: Vec<usize> = (0..files.len()).filter(|&i| cached[i].is_none()).collect();
    let now = mustbuild_store::filecache::now_ns();
    let trusted_from = |i: usize| mustbuild_store::filecache::trusted_from(&ids[i]);
    let mut fresh: std::collections::HashSet<usize> = again
        .iter()
        .copied()
        .filter(|&i| trusted_from(i) > now)
        .collect();
    let fresh_bytes: i64 = fresh.iter().map(|&i| ids[i].size).sum();
    // A tool's line holds its identity only: it must be proven now.
    let fresh_tool = fresh.iter().any(|&i| i < tools.len());
    if fresh_bytes > MAX_FRESH_BYTES || fresh_tool {
        let wait = fresh.iter().map(|&i| trusted_from(i)).max().unwrap_or(0) - now;
        if wait > MAX_SETTLE_NS {
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_nanos(wait.max(0).unsigned_abs()));
        fresh.clear();
    }
    again.retain(|i| !fresh.contains(i));
    if !again.is_empty() {
        let paths: Vec<&Path> = again.iter().map(|&i| files[i].0.as_path()).collect();
        store.file_digests(&paths);
        let more = store.cached_digests(&again.iter().map(|&i| ids[i]).collect::<Vec<_>>())?;
        for (&i, c) in again.iter().zip(more) {
            cached[i] = c;
        }
    }
    for (i, ((path, digest), c)) in files.iter().zip(&cached).enumerate() {
        if (*c != Some(*digest) && !fresh.contains(&i)) || !clean(&path.to_string_lossy()) {
            return Ok(None);
        }
    }
    for (k, (name, tool)) in tools.iter().enumerate() {
        let _ = writeln!(
            body,
            "tool\t{name}\t{}\t{}",
            fmt_identity(&ids[k]),
            tool.path.display()
        );
    }
    // A file in the pipeline's folder by its path there (shorter to read, and
    // looked up from the folder, opened once).
    for (k, (path, digest)) in files.iter().enumerate().skip(tools.len()) {
        let _ = writeln!(
            body,
            "{}\t{}\t{}\t{}",
            if fresh.contains(&k) { "fresh" } else { "file" },
            fmt_identity(&ids[k]),
            digest.to_hex(),
            path.strip_prefix(&root).unwrap_or(path).display()
        );
    }
    for (i, inst) in instances.all.iter().enumerate() {
        let step = &wf.step(inst.step).name;
        let (Some(key), Some(outs)) = (keys[i], &outputs[i]) else {
            return Ok(None);
        };
        if inst.values.iter().any(|v| !clean(v)) {
            return Ok(None);
        }
        let outs: Vec<String> = outs.iter().map(Digest::to_hex).collect();
        let _ = writeln!(
            body,
            "instance\t{step}\t{}\t{}\t{}",
            inst.values.join("\u{1f}"),
            key.to_hex(),
            outs.join(",")
        );
    }
    Ok(Some(body))
}

fn list_digest(files: &[String]) -> Digest {
    Digest::of(files.join("\n").as_bytes())
}

/// What the record of the last complete run says of this one: a no-op (then
/// recorded as a session), or what may be taken from it. Any doubt (no record, a
/// changed pipeline, tool or glob, an unreadable record) gives `Check::None`.
pub fn check(store: &LocalStore, request: &Request) -> Result<Check, StoreError> {
    let name = request.name();
    let Some(record) = store.noop_record(&name)? else {
        return Ok(Check::None);
    };
    let Ok(body) = std::str::from_utf8(&record.body) else {
        return Ok(Check::None);
    };
    let Some(read) = read(body, request) else {
        return Ok(Check::None);
    };
    let unchanged = unchanged_files(store, &read.root, &read.files);
    if unchanged.iter().all(|&same| same) {
        let Some(session) = store.reuse_session(read.name, &record)? else {
            return Ok(Check::None);
        };
        let instances = read
            .instances
            .iter()
            .map(|[step, values, ..]| (step.to_string(), split_values(values)))
            .collect();
        return Ok(Check::NoOp(NoOp { session, instances }));
    }
    // Some files changed: what holds is parsed for the run.
    let prior = (|| {
        let mut instances = Vec::with_capacity(read.instances.len());
        for [step, values, key, outputs] in &read.instances {
            instances.push(Recorded {
                step: step.to_string(),
                values: split_values(values),
                key: key.parse().ok()?,
                outputs: if outputs.is_empty() {
                    Vec::new()
                } else {
                    outputs
                        .split(',')
                        .map(|d| d.parse().ok())
                        .collect::<Option<Vec<Digest>>>()?
                },
            });
        }
        let mut files = HashMap::with_capacity(read.files.len());
        for (f, same) in read.files.iter().zip(unchanged) {
            files.insert(read.root.join(f.path), (f.digest.parse().ok()?, same));
        }
        Some(Prior { instances, files })
    })();
    Ok(prior.map_or(Check::None, Check::Partial))
}

fn split_values(values: &str) -> Vec<String> {
    if values.is_empty() {
        Vec::new()
    } else {
        values.split('\u{1f}').map(str::to_string).collect()
    }
}

/// A record whose global part holds: its lines, not parsed further.
struct Read<'a> {
    name: &'a str,
    /// Step, values, key, outputs.
    instances: Vec<[&'a str; 4]>,
    /// The pipeline's folder, which relative paths are in.
    root: PathBuf,
    files: Vec<RecordedFile<'a>>,
}

/// A file as the record has it.
struct RecordedFile<'a> {
    identity: Identity,
    /// The digest the run used, in hexadecimal.
    digest: &'a str,
    /// Absolute, or relative to the pipeline's folder.
    path: &'a str,
    /// Too new, when recorded, for its identity to prove its content: the next
    /// run reads it.
    fresh: bool,
}

/// Whether each file has the identity recorded (stat on two threads: the files
/// are many, the calls short), and a fresh one the content recorded too.
fn unchanged_files(store: &LocalStore, root: &Path, files: &[RecordedFile<'_>]) -> Vec<bool> {
    let mut same = same_identities(root, files);
    let fresh: Vec<usize> = (0..files.len())
        .filter(|&i| files[i].fresh && same[i])
        .collect();
    let fresh_bytes: i64 = fresh.iter().map(|&i| files[i].identity.size).sum();
    if fresh_bytes <= FRESH_READ_BYTES {
        // Small: read again, which costs less than asking the digest cache and
        // filling it (and the next run reads them as cheaply).
        for &i in &fresh {
            let text = std::fs::read(root.join(files[i].path));
            same[i] = text.is_ok_and(|t| Digest::of(&t).to_hex() == files[i].digest);
        }
    } else {
        let paths: Vec<PathBuf> = fresh.iter().map(|&i| root.join(files[i].path)).collect();
        let paths: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        for (&i, hashed) in fresh.iter().zip(store.file_digests(&paths)) {
            same[i] = hashed.is_ok_and(|(d, _, _)| d.to_hex() == files[i].digest);
        }
    }
    same
}

fn same_identities(root: &Path, files: &[RecordedFile<'_>]) -> Vec<bool> {
    let same = |files: &[RecordedFile<'_>]| {
        let mut folders = Folders::new(root);
        files
            .iter()
            .map(|f| folders.identity(f.path) == Some(f.identity))
            .collect::<Vec<bool>>()
    };
    // A thread costs more than a few thousand stats.
    if files.len() < 8192 {
        return same(files);
    }
    let (a, b) = files.split_at(files.len() / 2);
    let (mut first, second) = std::thread::scope(|s| {
        let other = s.spawn(|| same(a));
        let mine = same(b);
        (other.join().unwrap_or_else(|_| vec![false; a.len()]), mine)
    });
    first.extend(second);
    first
}

/// Stats files by name within their folder, opened once (`O_PATH`): the kernel
/// then looks up one name per file rather than every component of a long
/// absolute path, which is most of the cost of thousands of stats. Relative
/// paths are in `root`.
struct Folders<'a> {
    root: &'a Path,
    open: HashMap<&'a str, Option<rustix::fd::OwnedFd>>,
}

impl<'a> Folders<'a> {
    fn new(root: &'a Path) -> Folders<'a> {
        Folders {
            root,
            open: HashMap::new(),
        }
    }

    /// What `identity_of` says of `path` (links followed), or `None`.
    fn identity(&mut self, path: &'a str) -> Option<Identity> {
        use rustix::fs::{AtFlags, Mode, OFlags, StatxFlags, makedev, open, statx};
        let (dir, name) = match path.rsplit_once('/') {
            Some(("", _)) | Some((_, "")) => return identity_of(&self.root.join(path)),
            Some((dir, name)) => (dir, name),
            None => ("", path),
        };
        let root = self.root;
        // (An absolute folder replaces the root when joined.)
        let fd = self.open.entry(dir).or_insert_with(|| {
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
            open(root.join(dir), flags, Mode::empty()).ok()
        });
        let Some(fd) = fd else {
            return identity_of(&root.join(path));
        };
        let wanted = StatxFlags::INO | StatxFlags::SIZE | StatxFlags::MTIME | StatxFlags::CTIME;
        let x = match statx(&*fd, name, AtFlags::empty(), wanted) {
            Ok(x) => x,
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => return None,
            // No statx here (a seccomp filter may refuse it): std falls back.
            Err(_) => return identity_of(&root.join(path)),
        };
        let ns = |t: rustix::fs::StatxTimestamp| {
            t.tv_sec
                .saturating_mul(1_000_000_000)
                .saturating_add(i64::from(t.tv_nsec))
        };
        Some(Identity {
            dev: makedev(x.stx_dev_major, x.stx_dev_minor) as i64,
            ino: x.stx_ino as i64,
            size: x.stx_size as i64,
            mtime_ns: ns(x.stx_mtime),
            ctime_ns: ns(x.stx_ctime),
        })
    }
}

/// The record's lines, if its pipeline files, overrides, `PATH`, executable, globs
/// and tools are as they were.
fn read<'a>(body: &'a str, request: &Request) -> Option<Read<'a>> {
    let mut lines = body.lines();
    if lines.next()? != MAGIC {
        return None;
    }
    let exe = exe_identity()?;
    let mut root = PathBuf::new();
    let mut name = "";
    let mut overrides = Vec::new();
    let mut instances = Vec::new();
    let mut files = Vec::new();
    // Lines every record has: the executable, PATH, the root.
    let (mut same_exe, mut same_path, mut has_root) = (false, false, false);
    for line in lines {
        // At most five fields: the line's kind, then up to four.
        let mut fields = [""; 5];
        let mut n = 0;
        for field in line.split('\t') {
            *fields.get_mut(n)? = field;
            n += 1;
        }
        let (kind, rest) = (fields[0], &fields[1..n.max(1)]);
        match (kind, rest) {
            ("exe", [id]) if parse_identity(id)? == exe => same_exe = true,
            ("name", [n]) => name = n,
            ("root", [r]) if Path::new(r) == request.root => {
                root = PathBuf::from(r);
                has_root = true;
            }
            ("path", [p]) if *p == request.path_var => same_path = true,
            ("param", [k, v]) => overrides.push((k.to_string(), v.to_string())),
            ("source", [digest, path]) => {
                let text = std::fs::read(path).ok()?;
                if Digest::of(&text).to_hex() != *digest {
                    return None;
                }
            }
            ("glob", [digest, pattern]) => {
                let found =
                    mustbuild_lang::expand::glob_files(&root, pattern, &mustbuild_lang::RealFiles)
                        .ok()?;
                if list_digest(&found).to_hex() != *digest {
                    return None;
                }
            }
            // A tool found elsewhere, or changed: its digest, hence every key, may be.
            ("tool", [name, id, path]) => {
                if locate_tool(name, &request.path_var)? != Path::new(path)
                    || identity_of(Path::new(path)) != Some(parse_identity(id)?)
                {
                    return None;
                }
            }
            ("file", [id, digest, path]) => files.push(RecordedFile {
                identity: parse_identity(id)?,
                digest,
                path,
                fresh: false,
            }),
            ("fresh", [id, digest, path]) => files.push(RecordedFile {
                identity: parse_identity(id)?,
                digest,
                path,
                fresh: true,
            }),
            ("instance", [step, values, key, outputs]) => {
                instances.push([*step, *values, *key, *outputs]);
            }
            _ => return None,
        }
    }
    (same_exe && same_path && has_root && overrides == request.overrides).then_some(Read {
        name,
        instances,
        root,
        files,
    })
}
