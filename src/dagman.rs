//! `mustbuild export dagman`: a DAG file and one submit file for users who want
//! HTCondor's DAGMan to drive a run, and the node scripts it calls.
//!
//! Every instance to run is a node whose job is `mustbuild worker`; instances
//! already realised are `DONE` nodes. A node's PRE script (`mustbuild
//! dagman-node prepare DIR NODE`) runs on the submit host once its parents are
//! done: it computes the instance's key from its inputs as a run would, and
//! prepares the job folder `DIR/nodes/NODE/` (inputs in place, the worker's
//! spec), or exits [`PRE_SKIP`] when the result is realised meanwhile. Its POST
//! script (`… finish …`) stores what the job left, records the run and puts
//! the outputs in the workspace. The store's database is opened by those
//! scripts only, on the submit host: never by a job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::exit;
use mustbuild_engine::Instances;
use mustbuild_engine::plan::Plan;
use mustbuild_lang::model::Workflow;
use mustbuild_store::LocalStore;
use std::io::Write as _;

/// The PRE script's status for "realised meanwhile": DAGMan then skips the
/// node's job and POST script, and counts the node done.
pub const PRE_SKIP: u8 = 99;

/// What the node scripts need to run the pipeline as it was exported.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Export {
    pub pipeline: PathBuf,
    pub store: PathBuf,
    pub params: Vec<(String, String)>,
    /// Node name → the output path that selects its instance.
    pub nodes: BTreeMap<String, String>,
}

/// What `export` is given of the planned run.
pub struct Planned<'a> {
    pub wf: &'a Workflow,
    pub instances: &'a Instances,
    pub store: &'a LocalStore,
    pub items: &'a [(mustbuild_engine::InstanceId, Plan)],
    pub pipeline: &'a Path,
    pub store_root: &'a Path,
    pub params: &'a [(String, String)],
    pub settings: &'a mustbuild_executors::htcondor::Settings,
}

fn io(action: &str, path: &Path, e: std::io::Error) -> u8 {
    tell!("error: cannot {action} {}: {e}", path.display());
    exit::ENVIRONMENT
}

/// Writes `DIR/pipeline.dag`, `DIR/node.sub`, `DIR/done.sub` and `DIR/export.json`.
pub fn export(dir: &Path, p: Planned<'_>) -> u8 {
    let absolute = |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = absolute(dir);
    if let Err(e) = std::fs::create_dir_all(dir.join("nodes")) {
        return io("create", &dir, e);
    }
    let program = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return io("locate", Path::new("the mustbuild binary"), e),
    };
    let advised = mustbuild_engine::run::advised(p.store, p.wf);
    let name = |id: mustbuild_engine::InstanceId| format!("n{}", id.index());
    let mut dag = format!(
        "# {} exported by mustbuild: run it with `condor_submit_dag {}`.\n\
         # Nodes run `mustbuild worker`; their PRE and POST scripts prepare and\n\
         # store them on this host. DONE nodes were realised at export.\n",
        p.wf.name,
        dir.join("pipeline.dag").display()
    );
    let mut nodes = BTreeMap::new();
    let (mut run, mut done) = (0, 0);
    for (id, plan) in p.items {
        let inst = p.instances.get(*id);
        let step = p.wf.step(inst.step);
        let node = name(*id);
        let label = mustbuild_engine::provenance::label(&step.name, &inst.values);
        dag.push_str(&format!("\n# {node}: {label}\n"));
        if matches!(plan, Plan::Cached) {
            done += 1;
            dag.push_str(&format!(
                "JOB {node} {} DONE\n",
                dir.join("done.sub").display()
            ));
            continue;
        }
        let Some(target) = inst.outputs.first() else {
            tell!(
                "error: step `{}` declares no output: it cannot be a DAG node",
                step.name
            );
            return exit::INVALID;
        };
        run += 1;
        nodes.insert(node.clone(), target.clone());
        let instance = mustbuild_engine::run::instance_label(&inst.values);
        let (memory, disk, _) = mustbuild_engine::run::memory_and_disk(step, &instance, &advised);
        let script = |phase: &str| {
            format!(
                "{} dagman-node {phase} {} {node}",
                program.display(),
                dir.display()
            )
        };
        dag.push_str(&format!(
            "JOB {node} {}\nVARS {node} node=\"{node}\" cpus=\"{}\" memory=\"{}\" disk=\"{}\" gpus=\"{}\"\n\
             SCRIPT PRE {node} {}\nSCRIPT POST {node} {}\nPRE_SKIP {node} {PRE_SKIP}\n",
            dir.join("node.sub").display(),
            step.resources.cpus.max(1),
            memory.div_ceil(1 << 20).max(1),
            disk.div_ceil(1 << 10).max(1),
            step.resources.gpus,
            script("prepare"),
            script("finish"),
        ));
    }
    dag.push('\n');
    for (id, _) in p.items {
        for d in &p.instances.get(*id).deps {
            dag.push_str(&format!("PARENT {} CHILD {}\n", name(*d), name(*id)));
        }
    }
    let s = p.settings;
    let mut sub = format!(
        "# A node of {}: `mustbuild worker` on the folder its PRE script prepared.\n\
         universe = vanilla\nexecutable = {}\narguments = \"worker {}/nodes/$(node)/job.json\"\n\
         initialdir = {}/nodes/$(node)\noutput = stdout\nerror = stderr\n\
         log = {}/nodes.log\nshould_transfer_files = NO\ngetenv = false\n\
         request_cpus = $(cpus)\nrequest_memory = $(memory)\nrequest_disk = $(disk)\nrequest_gpus = $(gpus)\n\
         batch_name = {}\n",
        p.wf.name,
        program.display(),
        dir.display(),
        dir.display(),
        dir.display(),
        s.batch_name
    );
    if let Some(g) = &s.accounting_group {
        sub.push_str(&format!("accounting_group = {g}\n"));
    }
    if let Some(r) = &s.requirements {
        sub.push_str(&format!("requirements = {r}\n"));
    }
    for extra in &s.extra {
        sub.push_str(extra);
        sub.push('\n');
    }
    sub.push_str("queue\n");
    // DAGMan reads a DONE node's submit file too: a job that is never run.
    let done_sub = "# A node realised at export: DAGMan never runs it.\n\
                    universe = local\nexecutable = /bin/true\nqueue\n";
    let export = Export {
        pipeline: absolute(p.pipeline),
        store: absolute(p.store_root),
        params: p.params.to_vec(),
        nodes,
    };
    let json = serde_json::to_vec_pretty(&export).unwrap_or_default();
    for (file, text) in [
        ("pipeline.dag", dag.as_bytes()),
        ("node.sub", sub.as_bytes()),
        ("done.sub", done_sub.as_bytes()),
        ("export.json", &json),
    ] {
        let path = dir.join(file);
        if let Err(e) = std::fs::write(&path, text) {
            return io("write", &path, e);
        }
    }
    outln!(
        "wrote {}: {run} node(s) to run, {done} done; run it with `condor_submit_dag {}`",
        dir.display(),
        dir.join("pipeline.dag").display()
    );
    exit::OK
}

/// A node script's phase.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Before the job: the job folder, or `PRE_SKIP` when realised meanwhile.
    Prepare,
    /// After it: store what it left.
    Finish,
}

/// What `mustbuild dagman-node PHASE DIR NODE` runs: `mustbuild run` on the
/// node's instance, with its job folder as the batch system.
pub fn node_run(dir: &Path, node: &str) -> Result<(Export, String, PathBuf), u8> {
    let path = dir.join("export.json");
    let export: Export = match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(e) => e,
        Err(e) => {
            tell!("error: cannot read {}: {e}", path.display());
            return Err(exit::ENVIRONMENT);
        }
    };
    let Some(target) = export.nodes.get(node).cloned() else {
        tell!("error: {} names no node `{node}`", path.display());
        return Err(exit::INVALID);
    };
    Ok((export, target, dir.join("nodes").join(node)))
}
