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
//! The record is in two parts. Its body is what every rerun reads: the above,
//! but for the files only their paths and one digest of all their identities
//! (and the digest of each fresh one), and the instances by name. Its detail
//! is read when that digest or a fresh file differs: each file's identity and
//! digest, each instance's key and outputs. So a no-op reads a tenth of it.
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

const MAGIC: &str = "mustbuild-noop 4";

/// The first word of a record's detail, which then names its body's digest.
const DETAIL_MAGIC: &str = "mustbuild-noop-detail 4";

/// The longest a run waits, at its end, for its newest outputs to become old
/// enough to be recorded (50 ms on file systems with fine timestamps).
const MAX_SETTLE_NS: i64 = 200_000_000;

/// Files too new to trust are recorded as fresh, and read again by the next run,
/// up to this many bytes in all; beyond, the run waits for them to settle.
const MAX_FRESH_BYTES: i64 = 64 << 20;

/// Fresh files up to this many bytes in all are checked by reading them, not
/// through the digest cache.
const FRESH_READ_BYTES: u64 = 1 << 20;

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
    /// The session that made the record: the instances taken from it are its.
    pub session: i64,
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
    let (body, detail) = match describe(store, request, run)? {
        Some(record) => record,
        None => {
            store.forget_noop_record(&name)?;
            return Ok(false);
        }
    };
    store.save_noop_record(
        &name,
        session,
        run.seen.generation,
        body.as_bytes(),
        detail.as_bytes(),
    )?;
    Ok(true)
}

/// A record's body, which every rerun reads: what the run read, the path of
/// every file, one digest of all their identities, and the instances by name;
/// and its detail, read when that digest or a fresh file differs: each file's
/// identity and digest, each instance's key and outputs, in the same order.
fn describe(
    store: &LocalStore,
    request: &Request,
    run: Finished<'_>,
) -> Result<Option<(String, String)>, StoreError> {
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
    let _ = writeln!(
        body,
        "identities\t{}",
        identities_digest(ids[tools.len()..].iter().map(Some)).to_hex()
    );
    // A file in the pipeline's folder by its path there (shorter to read, and
    // looked up from the folder, opened once).
    let recorded_files = files.iter().enumerate().skip(tools.len());
    for (k, (path, digest)) in recorded_files.clone() {
        let path = path.strip_prefix(&root).unwrap_or(path).display();
        if fresh.contains(&k) {
            let _ = writeln!(body, "fresh\t{}\t{path}", digest.to_hex());
        } else {
            let _ = writeln!(body, "file\t{path}");
        }
    }
    let mut realised = Vec::with_capacity(instances.all.len());
    for (i, inst) in instances.all.iter().enumerate() {
        let step = &wf.step(inst.step).name;
        let (Some(key), Some(outs)) = (keys[i], &outputs[i]) else {
            return Ok(None);
        };
        if inst.values.iter().any(|v| !clean(v)) {
            return Ok(None);
        }
        let _ = writeln!(body, "instance\t{step}\t{}", inst.values.join("\u{1f}"));
        realised.push((key, outs));
    }
    // The detail names the body it goes with: both are read in two queries,
    // between which another run may have replaced the record.
    let mut detail = format!("{DETAIL_MAGIC}\t{}\n", Digest::of(body.as_bytes()).to_hex());
    for (k, (_, digest)) in recorded_files {
        let _ = writeln!(
            detail,
            "file\t{}\t{}",
            fmt_identity(&ids[k]),
            digest.to_hex()
        );
    }
    for (key, outs) in realised {
        let outs: Vec<String> = outs.iter().map(Digest::to_hex).collect();
        let _ = writeln!(detail, "instance\t{}\t{}", key.to_hex(), outs.join(","));
    }
    Ok(Some((body, detail)))
}

/// One digest of the identities of a record's files, in order (`None`: no file).
fn identities_digest<'a>(identities: impl IntoIterator<Item = Option<&'a Identity>>) -> Digest {
    let identities = identities.into_iter();
    let mut bytes = Vec::with_capacity(identities.size_hint().0 * 41);
    for id in identities {
        match id {
            None => bytes.push(0),
            Some(i) => {
                bytes.push(1);
                for n in [i.dev, i.ino, i.size, i.mtime_ns, i.ctime_ns] {
                    bytes.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
    }
    Digest::of(&bytes)
}

fn list_digest(files: &[String]) -> Digest {
    Digest::of(files.join("\n").as_bytes())
}

/// What the record of the last complete run says of this one: a no-op (then
/// recorded as a session), or what may be taken from it. Any doubt (no record, a
/// changed pipeline, tool or glob, an unreadable record) gives `Check::None`.
/// `info`: what a no-op session records of itself (`RunOptions::info`).
pub fn check(
    store: &LocalStore,
    request: &Request,
    info: Option<&str>,
) -> Result<Check, StoreError> {
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
    let identities = identities(&read.root, &read.files);
    // Every file with the identity recorded: only fresh ones can have changed.
    // Otherwise, which did is in the detail.
    let mut detail = None;
    let mut same = vec![true; read.files.len()];
    if identities_digest(identities.iter().map(Option::as_ref)) != read.identities {
        let Some(d) = read_detail(store, &name, &read)? else {
            return Ok(Check::None);
        };
        for ((same, found), (recorded, _)) in same.iter_mut().zip(&identities).zip(&d.files) {
            *same = *found == Some(*recorded);
        }
        detail = Some(d);
    }
    fresh_unchanged(store, &read.root, &read.files, &identities, &mut same);
    if detail.is_none() && same.iter().all(|&same| same) {
        let Some(session) = store.reuse_session(read.name, &record, info)? else {
            return Ok(Check::None);
        };
        let instances = read
            .instances
            .iter()
            .map(|[step, values]| (step.to_string(), split_values(values)))
            .collect();
        return Ok(Check::NoOp(NoOp { session, instances }));
    }
    // Some files changed: what holds is taken for the run.
    let detail = match detail {
        Some(d) => d,
        None => match read_detail(store, &name, &read)? {
            Some(d) => d,
            None => return Ok(Check::None),
        },
    };
    let instances = read
        .instances
        .iter()
        .zip(detail.instances)
        .map(|([step, values], (key, outputs))| Recorded {
            step: step.to_string(),
            values: split_values(values),
            key,
            outputs,
        })
        .collect();
    let files = read
        .files
        .iter()
        .zip(&detail.files)
        .zip(same)
        .map(|((f, (_, digest)), same)| (read.root.join(f.path), (*digest, same)))
        .collect();
    Ok(Check::Partial(Prior {
        session: record.session,
        instances,
        files,
    }))
}

fn split_values(values: &str) -> Vec<String> {
    if values.is_empty() {
        Vec::new()
    } else {
        values.split('\u{1f}').map(str::to_string).collect()
    }
}

/// A record's body whose global part holds: its lines, not parsed further.
struct Read<'a> {
    /// The body, whose digest its detail names.
    body: &'a str,
    name: &'a str,
    /// Step, values.
    instances: Vec<[&'a str; 2]>,
    /// The pipeline's folder, which relative paths are in.
    root: PathBuf,
    files: Vec<RecordedFile<'a>>,
    /// The digest of the files' identities, in order.
    identities: Digest,
}

/// A file as the record's body has it.
struct RecordedFile<'a> {
    /// Absolute, or relative to the pipeline's folder.
    path: &'a str,
    /// Too new, when recorded, for its identity to prove its content: the next
    /// run reads it, and compares it with this digest (in hexadecimal).
    fresh: Option<&'a str>,
}

/// A record's detail, in the order of its body.
struct Detail {
    /// Per file: its identity and digest.
    files: Vec<(Identity, Digest)>,
    /// Per instance: its key and outputs.
    instances: Vec<(Digest, Vec<Digest>)>,
}

/// The detail of the record whose body was read, if it still goes with it.
fn read_detail(
    store: &LocalStore,
    name: &str,
    read: &Read<'_>,
) -> Result<Option<Detail>, StoreError> {
    let Some(text) = store.noop_record_detail(name)? else {
        return Ok(None);
    };
    Ok(std::str::from_utf8(&text)
        .ok()
        .and_then(|text| parse_detail(text, read)))
}

fn parse_detail(text: &str, read: &Read<'_>) -> Option<Detail> {
    let mut lines = text.lines();
    let (magic, of) = lines.next()?.split_once('\t')?;
    if magic != DETAIL_MAGIC || of.parse::<Digest>().ok()? != Digest::of(read.body.as_bytes()) {
        return None;
    }
    let mut files = Vec::with_capacity(read.files.len());
    let mut instances = Vec::with_capacity(read.instances.len());
    for line in lines {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["file", id, digest] => files.push((parse_identity(id)?, digest.parse().ok()?)),
            ["instance", key, outputs] => instances.push((
                key.parse().ok()?,
                if outputs.is_empty() {
                    Vec::new()
                } else {
                    outputs
                        .split(',')
                        .map(|d| d.parse().ok())
                        .collect::<Option<Vec<Digest>>>()?
                },
            )),
            _ => return None,
        }
    }
    (files.len() == read.files.len() && instances.len() == read.instances.len())
        .then_some(Detail { files, instances })
}

/// Reads again the fresh files among those still `same` (with the identity
/// recorded, as found), and says whether each has the content recorded: directly
/// when they are few bytes, otherwise through the digest cache (which spares
/// later runs reading big files again).
fn fresh_unchanged(
    store: &LocalStore,
    root: &Path,
    files: &[RecordedFile<'_>],
    identities: &[Option<Identity>],
    same: &mut [bool],
) {
    let fresh: Vec<(usize, &str)> = (0..files.len())
        .filter(|&i| same[i])
        .filter_map(|i| files[i].fresh.map(|d| (i, d)))
        .collect();
    if fresh.is_empty() {
        return;
    }
    let paths: Vec<PathBuf> = fresh
        .iter()
        .map(|&(i, _)| root.join(files[i].path))
        .collect();
    let size = |i: usize| identities[i].map_or(0, |id| id.size.unsigned_abs());
    if fresh.iter().map(|&(i, _)| size(i)).sum::<u64>() <= FRESH_READ_BYTES {
        // Small: read again, which costs less than asking the digest cache and
        // filling it (and the next run reads them as cheaply).
        for ((i, digest), path) in fresh.iter().zip(&paths) {
            let text = std::fs::read(path);
            same[*i] = text.is_ok_and(|t| Digest::of(&t).to_hex() == *digest);
        }
    } else {
        let paths: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        for ((i, digest), hashed) in fresh.iter().zip(store.file_digests(&paths)) {
            same[*i] = hashed.is_ok_and(|(d, _, _)| d.to_hex() == *digest);
        }
    }
}

/// The identity of each file (`None`: none there), by stat on two threads when
/// they are very many (a thread costs more than a few thousand stats).
fn identities(root: &Path, files: &[RecordedFile<'_>]) -> Vec<Option<Identity>> {
    let look = |files: &[RecordedFile<'_>]| {
        let mut folders = Folders::new(root);
        files
            .iter()
            .map(|f| folders.identity(f.path))
            .collect::<Vec<_>>()
    };
    if files.len() < 8192 {
        return look(files);
    }
    let (a, b) = files.split_at(files.len() / 2);
    let (mut first, second) = std::thread::scope(|s| {
        let other = s.spawn(|| look(a));
        let mine = look(b);
        (other.join().unwrap_or_else(|_| vec![None; a.len()]), mine)
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
    let mut identities = None;
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
            ("identities", [digest]) => identities = Some(digest.parse().ok()?),
            ("file", [path]) => files.push(RecordedFile { path, fresh: None }),
            ("fresh", [digest, path]) => files.push(RecordedFile {
                path,
                fresh: Some(digest),
            }),
            ("instance", [step, values]) => instances.push([*step, *values]),
            _ => return None,
        }
    }
    (same_exe && same_path && has_root && overrides == request.overrides).then_some(Read {
        body,
        name,
        instances,
        root,
        files,
        identities: identities?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{RunOptions, run};
    use mustbuild_lang::{Diagnostics, RealFiles, expand, load};

    const PIPELINE: &str = r#"pipeline "n"
input parts glob="parts/*.txt"
step head {
    foreach part from=parts
    in p=part
    out o="out/{part.stem}.txt"
    run "head -n 1 {in.p} > {out.o}"
}
"#;

    /// Runs the pipeline in `root` to the end, as `mustbuild run` does; the
    /// request its record answers.
    fn run_all(root: &Path, store: &LocalStore) -> Request {
        let path = root.join("pipeline.kdl");
        let loaded = load(&path);
        let wf = loaded.workflow.as_ref().expect("a valid pipeline");
        let expansion = expand(wf, &RealFiles, &mut Diagnostics::default());
        let instances = crate::instantiate(wf, &expansion);
        let path_var = std::env::var("PATH").unwrap_or_default();
        let request = Request {
            pipeline: path.canonicalize().unwrap(),
            root: root.to_path_buf(),
            overrides: Vec::new(),
            path_var: path_var.clone(),
            pipeline_files: Some(
                loaded
                    .sources
                    .files()
                    .map(|(_, f)| (f.path.clone(), Digest::of(f.text.as_bytes())))
                    .collect(),
            ),
            glob_files: expansion.glob_files.clone(),
        };
        let options = RunOptions {
            jobs: 2,
            memory_bytes: None,
            path_var,
            keep_going: false,
            cancel: Default::default(),
            selected: None,
            force: Vec::new(),
            gpus: Vec::new(),
            noop: Some(request.clone()),
            prior: None,
            info: None,
            energy_model: Default::default(),
            cache: None,
            batch: None,
            sandbox: false,
            sandbox_report: false,
            require_sandbox: false,
        };
        let summary = run(wf, &instances, store, &options, &mut |_| {}).unwrap();
        assert_eq!(summary.executed, 2);
        request
    }

    #[test]
    fn a_record_tells_which_files_changed_only_with_its_own_detail() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("p");
        std::fs::create_dir_all(root.join("parts")).unwrap();
        std::fs::write(root.join("pipeline.kdl"), PIPELINE).unwrap();
        std::fs::write(root.join("parts/a.txt"), "a1\na2\n").unwrap();
        std::fs::write(root.join("parts/b.txt"), "b1\nb2\n").unwrap();
        // Sources old enough for their identity to be trusted (not fresh).
        std::thread::sleep(std::time::Duration::from_millis(100));
        let store = LocalStore::open(tmp.path().join("store")).unwrap();
        let request = run_all(&root, &store);
        assert!(matches!(check(&store, &request, None), Ok(Check::NoOp(_))));

        // A source changed (its size too, so that its identity shows it): the
        // record's detail says which, and what holds of the rest.
        std::fs::write(root.join("parts/a.txt"), "A1\na2\nA3\n").unwrap();
        let Ok(Check::Partial(prior)) = check(&store, &request, None) else {
            panic!("a record that holds but for one file");
        };
        let changed: Vec<&PathBuf> = prior
            .files
            .iter()
            .filter(|(_, (_, same))| !same)
            .map(|(path, _)| path)
            .collect();
        assert_eq!(changed, [&root.join("parts/a.txt")]);
        assert_eq!(
            prior.files[&root.join("out/b.txt")],
            (Digest::of(b"b1\n"), true)
        );
        let outputs: Vec<&[Digest]> = prior.instances.iter().map(|i| &i.outputs[..]).collect();
        assert_eq!(
            outputs,
            [&[Digest::of(b"a1\n")][..], &[Digest::of(b"b1\n")][..]]
        );

        // A fresh file (too new, when recorded, for its identity to tell) is
        // compared by content even when the detail says which files changed:
        // here the record says other bytes than out/b.txt holds.
        let name = request.name();
        let record = store.noop_record(&name).unwrap().unwrap();
        let body = String::from_utf8(record.body.clone()).unwrap();
        let other = Digest::of(b"other bytes").to_hex();
        let fresh_b: String = body
            .lines()
            .map(|l| match l.split('\t').collect::<Vec<_>>().as_slice() {
                ["file" | "fresh", .., "out/b.txt"] => format!("fresh\t{other}\tout/b.txt\n"),
                _ => format!("{l}\n"),
            })
            .collect();
        assert_ne!(fresh_b, body);
        let detail = store.noop_record_detail(&name).unwrap().unwrap();
        let detail = String::from_utf8(detail).unwrap();
        let (_, rest) = detail.split_once('\n').unwrap();
        let with_body = |body: &str, rest: &str| {
            let detail = format!(
                "{DETAIL_MAGIC}\t{}\n{rest}",
                Digest::of(body.as_bytes()).to_hex()
            );
            store
                .save_noop_record(
                    &name,
                    record.session,
                    record.generation,
                    body.as_bytes(),
                    detail.as_bytes(),
                )
                .unwrap();
        };
        with_body(&fresh_b, rest);
        let Ok(Check::Partial(prior)) = check(&store, &request, None) else {
            panic!("a record that holds but for two files");
        };
        assert!(!prior.files[&root.join("out/b.txt")].1);
        assert!(!prior.files[&root.join("parts/a.txt")].1);
        assert!(prior.files[&root.join("parts/b.txt")].1);

        // A detail with more files than its body names is not taken.
        with_body(&body, &format!("{rest}{}", rest.lines().next().unwrap()));
        assert_eq!(check(&store, &request, None).unwrap(), Check::None);

        // Nor is a detail saved with another body (another run's, saved between
        // the two reads).
        store
            .save_noop_record(
                &name,
                record.session,
                record.generation,
                &record.body,
                format!(
                    "{DETAIL_MAGIC}\t{}\n{rest}",
                    Digest::of(b"another body").to_hex()
                )
                .as_bytes(),
            )
            .unwrap();
        assert_eq!(check(&store, &request, None).unwrap(), Check::None);
    }
}
