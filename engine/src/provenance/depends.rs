//! `mustbuild why --depends A B`: the paths from A to B in the derivation graph
//! of a run, as the store recorded it (each instance's inputs by digest, each
//! digest's producer in that run).

use super::{PathOrigin, ProvenanceError, RunInfo, choose_producer, label, path_origin, values_of};
use crate::keys::input_digests;
use mustbuild_store::{Digest, InstanceRow, LocalStore};
use serde::Serialize;
use std::collections::HashMap;

/// At most this many paths are listed (a dense graph has exponentially many).
const MAX_PATHS: usize = 50;

#[derive(Debug, Clone, Serialize)]
pub struct Depends {
    pub run: i64,
    pub from: String,
    pub to: String,
    /// Each path, from `from` to `to`; empty when `to` does not depend on `from`.
    pub paths: Vec<Vec<String>>,
    /// More paths than listed.
    pub truncated: bool,
}

/// The paths by which `to` reads (transitively) what `from` makes, in the run
/// that recorded `to` (`from` is looked up in the same run).
pub fn depends(
    store: &LocalStore,
    session: i64,
    from: &InstanceRow,
    to: &InstanceRow,
) -> Result<Depends, ProvenanceError> {
    let rows = store.session_instances(session)?;
    let index: HashMap<(&str, &str), usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| ((r.step.as_str(), r.instance.as_str()), i))
        .collect();
    let mut producers: HashMap<Digest, Vec<usize>> = HashMap::new();
    for (row, digest) in store.session_outputs(session)? {
        if let Some(&i) = index.get(&(row.step.as_str(), row.instance.as_str())) {
            producers.entry(digest).or_default().push(i);
        }
    }
    let info = store.session(session)?;
    let root = RunInfo::parse(info.as_ref().and_then(|s| s.info.as_deref())).root;
    // Several instances may make the same bytes: the path tells whose output
    // an input is, or that it is a source.
    let mut origins: HashMap<String, PathOrigin> = HashMap::new();
    let mut producer =
        |path: &str, digest: &Digest, me: usize| -> Result<Option<usize>, ProvenanceError> {
            let candidates: Vec<usize> = producers
                .get(digest)
                .map(|c| c.iter().copied().filter(|&p| p != me).collect())
                .unwrap_or_default();
            if candidates.is_empty() {
                return Ok(None);
            }
            if !origins.contains_key(path) {
                origins.insert(path.to_string(), path_origin(store, &root, path)?);
            }
            let origin = &origins[path];
            Ok(
                choose_producer(origin, &candidates, |&c, step| rows[c].step == step)
                    .map(|i| candidates[i]),
            )
        };
    // Each instance's inputs made in this run.
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); rows.len()];
    for (i, r) in rows.iter().enumerate() {
        if let Some(m) = store.derivation(&r.key)? {
            let mut d = Vec::new();
            for (path, digest, _) in input_digests(&m) {
                if let Some(p) = producer(path, &digest, i)? {
                    d.push(p);
                }
            }
            d.sort_unstable();
            d.dedup();
            deps[i] = d;
        }
    }
    let find = |r: &InstanceRow| index.get(&(r.step.as_str(), r.instance.as_str())).copied();
    let name = |i: usize| label(&rows[i].step, &values_of(&rows[i].instance));
    let mut out = Depends {
        run: session,
        from: label(&from.step, &values_of(&from.instance)),
        to: label(&to.step, &values_of(&to.instance)),
        paths: Vec::new(),
        truncated: false,
    };
    let (Some(a), Some(b)) = (find(from), find(to)) else {
        return Ok(out);
    };
    // Which instances reach `a` through their inputs (memoised, without recursion).
    let mut reaches: Vec<Option<bool>> = vec![None; rows.len()];
    reaches[a] = Some(true);
    let mut stack = vec![b];
    while let Some(&n) = stack.last() {
        if reaches[n].is_some() {
            stack.pop();
            continue;
        }
        match deps[n].iter().find(|d| reaches[**d].is_none()) {
            Some(&d) => stack.push(d),
            None => {
                reaches[n] = Some(deps[n].iter().any(|d| reaches[*d] == Some(true)));
                stack.pop();
            }
        }
    }
    if reaches[b] != Some(true) {
        return Ok(out);
    }
    // Every path from `b` down to `a`, depth first, up to MAX_PATHS.
    let mut path = vec![b];
    let mut choices: Vec<usize> = vec![0];
    while let Some(&n) = path.last() {
        if n == a {
            if out.paths.len() == MAX_PATHS {
                out.truncated = true;
                break;
            }
            out.paths
                .push(path.iter().rev().map(|&i| name(i)).collect());
            path.pop();
            choices.pop();
            continue;
        }
        let next = choices.last_mut().and_then(|c| {
            let found = deps[n][*c..]
                .iter()
                .position(|d| reaches[*d] == Some(true))
                .map(|p| *c + p);
            if let Some(f) = found {
                *c = f + 1;
            }
            found.map(|f| deps[n][f])
        });
        match next {
            Some(d) => {
                path.push(d);
                choices.push(0);
            }
            None => {
                path.pop();
                choices.pop();
            }
        }
    }
    Ok(out)
}
