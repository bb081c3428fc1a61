//! Job preparation: what an instance to run needs, as plain data: what goes in
//! its folder (`Placement`s) and the request its command runs from.

use super::scratch::Placement;
use crate::instantiate::{FileRef, InstanceId, Instances};
use mustbuild_executors::ExecRequest;
use mustbuild_executors::sandbox::{Allowances, Sandbox};
use mustbuild_lang::model::{PathKind, Workflow};
use mustbuild_store::{Digest, OutputKind};
use std::path::PathBuf;

pub(crate) struct Job {
    pub(crate) id: InstanceId,
    /// Held from before the run until the realisation is committed: two processes
    /// never run the same derivation at once.
    pub(crate) lock: Option<std::fs::File>,
    /// Run even if realised (`--force`).
    pub(crate) force: bool,
    pub(crate) attempt: u32,
    /// Its place in the order jobs were handed out: the first waiting for slots
    /// goes first.
    pub(crate) ticket: u64,
    /// What its command takes out of the slots: CPUs, bytes of memory, GPUs.
    pub(crate) cpus: usize,
    pub(crate) memory: u64,
    pub(crate) gpus: usize,
    /// Local disk to ask a batch system for, in bytes.
    pub(crate) disk: u64,
    /// Where history sizes a batch job's memory by its inputs: the line.
    pub(crate) memory_line: Option<crate::advice::MemoryLine>,
    /// The bytes of the inputs put in its folder, once they are.
    pub(crate) input_bytes: Option<u64>,
    /// How long it should take, where declared (`time`) or measured: a batch
    /// system gets short jobs in groups.
    pub(crate) expected: Option<std::time::Duration>,
    pub(crate) key: Digest,
    /// What to put in the scratch folder before the command runs.
    pub(crate) placements: Vec<Placement>,
    /// What its sandbox allows besides its folder, where the run sandboxes:
    /// `None` when its step says `sandbox #false`.
    pub(crate) sandbox: Option<Allowances>,
    pub(crate) request: ExecRequest,
}

/// A job for an instance: what goes in its scratch folder, and the request
/// (the worker that takes it adds the folder, log, `HOME` and `TMPDIR`).
pub(crate) fn prepare(
    wf: &Workflow,
    instances: &Instances,
    id: InstanceId,
    key: Digest,
    outputs: &[Option<Vec<Digest>>],
    kinds: &[Option<Vec<OutputKind>>],
    path_var: &str,
) -> Job {
    let inst = instances.get(id);
    let mut placements = Vec::new();
    let mut outside = Vec::new();
    for files in &inst.inputs {
        for f in files {
            match f {
                FileRef::Source(p) if !p.starts_with('/') => placements.push(Placement::Source {
                    from: wf.root.join(p),
                    to: p.clone(),
                }),
                FileRef::Source(p) => outside.push(PathBuf::from(p)),
                FileRef::Output { instance, output } => {
                    let up = instances.get(*instance);
                    if let Some(d) = outputs[instance.index()].as_ref().map(|d| d[*output]) {
                        let declared = if wf.step(up.step).outputs[*output].kind == PathKind::Dir {
                            OutputKind::Tree
                        } else {
                            OutputKind::File
                        };
                        let kind = kinds[instance.index()]
                            .as_ref()
                            .and_then(|k| k.get(*output).copied())
                            .unwrap_or(declared);
                        placements.push(Placement::Object {
                            digest: d,
                            kind,
                            to: up.outputs[*output].clone(),
                        });
                    }
                }
            }
        }
    }
    for path in inst.outputs.iter().chain(&inst.log) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            placements.push(Placement::Folder(parent.to_string()));
        }
    }
    let request = exec_request(wf, instances, id, path_var);
    let step = wf.step(inst.step);
    let sandbox = wf.sandboxed(step).then(|| Allowances {
        inputs: outside,
        read: wf.sandbox_reads(step).map(PathBuf::from).collect(),
        network: step.network,
        keep_out: Vec::new(), // ToolReads::allow sets it
    });
    Job {
        id,
        lock: None,
        force: false,
        attempt: 0,
        ticket: 0,
        cpus: 1,
        memory: 0,
        gpus: 0,
        disk: 0,
        memory_line: None,
        input_bytes: None,
        expected: None,
        key,
        placements,
        sandbox,
        request,
    }
}

impl Job {
    /// Gives its request the sandbox its step allows, once the request has
    /// its folder and environment (a step with `sandbox #false` gets none).
    pub(crate) fn sandbox_request(&mut self) {
        if let Some(allows) = &self.sandbox {
            let r = &self.request;
            self.request.sandbox = Some(Sandbox::for_step(&r.dir, &r.env, allows));
        }
    }
}

/// What a step's declared tools need read beyond the `PATH`'s folders.
#[derive(Debug, Clone, Default)]
pub(crate) struct ToolReads {
    /// Each tool's file, links followed: always readable (its bytes are in
    /// the key).
    pub(crate) files: Vec<PathBuf>,
    /// The folder each resolves to (`python3` on `PATH` may be a link into
    /// a conda environment elsewhere) and the installation above a `…/bin`:
    /// readable unless they would open the workspace, the store or the home.
    pub(crate) folders: Vec<PathBuf>,
}

impl ToolReads {
    /// Adds them to what a job's sandbox allows, with what must stay out
    /// of it (the pipeline's folder, the store).
    pub(crate) fn allow(&self, allows: &mut Allowances, keep_out: [&std::path::Path; 2]) {
        allows.inputs.extend(self.files.iter().cloned());
        allows.read.extend(self.folders.iter().cloned());
        allows.keep_out = keep_out.iter().map(|p| p.to_path_buf()).collect();
    }
}

/// For each step, what its declared tools need read ([`ToolReads`]).
pub(crate) fn tool_folders(
    wf: &Workflow,
    tools: &std::collections::BTreeMap<String, crate::keys::ToolIdentity>,
) -> Vec<ToolReads> {
    (wf.steps.iter())
        .map(|step| {
            let mut folders: Vec<PathBuf> = Vec::new();
            let mut files: Vec<PathBuf> = Vec::new();
            for t in wf.tools.iter().chain(&step.tools) {
                let Some(identity) = tools.get(t.name.as_str()) else {
                    continue;
                };
                files.push(identity.path.clone());
                let Some(folder) = identity.path.parent() else {
                    continue;
                };
                let prefix = (folder.file_name().is_some_and(|n| n == "bin"))
                    .then(|| folder.parent())
                    .flatten()
                    .filter(|p| p != &std::path::Path::new("/"));
                for f in [Some(folder), prefix].into_iter().flatten() {
                    if !folders.iter().any(|x| x == f) {
                        folders.push(f.to_path_buf());
                    }
                }
            }
            ToolReads { files, folders }
        })
        .collect()
}

/// How an instance's command is run (its folder and log path left empty, for
/// the caller): `run` and `audit` run a step the same way.
pub(crate) fn exec_request(
    wf: &Workflow,
    instances: &Instances,
    id: InstanceId,
    path_var: &str,
) -> ExecRequest {
    let inst = instances.get(id);
    let step = wf.step(inst.step);
    let mut env: Vec<(String, String)> = wf
        .env
        .iter()
        .chain(&step.env)
        .map(|e| (e.name.to_string(), e.value.clone()))
        .collect();
    env.push(("PATH".into(), path_var.to_string()));
    ExecRequest {
        command: crate::command::render_command(wf, instances, id),
        dir: PathBuf::new(),
        env,
        log: PathBuf::new(),
        outputs: inst.outputs.iter().map(PathBuf::from).collect(),
        time_limit: step
            .resources
            .time_seconds
            .map(std::time::Duration::from_secs),
        gpus: None,
        sandbox: None,
    }
}
