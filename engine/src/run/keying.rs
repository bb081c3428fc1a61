//! Keying what became ready, a batch to a transaction: keys known from the
//! no-op record where what they read came out as recorded, the others
//! computed from content; each then found realised (here, or in a remote
//! cache) and materialised, releasing its dependents at once, or left to run.

use super::coordinator::{Coordinator, Progress};
use super::materialise::materialize_outputs;
use super::priority::{rank_for, step_durations, upward_ranks};
use super::{
    Event, KEY_BATCH, RunError, Runnable, in_order, instance_label, only_tools_or_env, release,
};
use crate::instantiate::{FileRef, InstanceId};
use crate::keys::key_from_outputs;
use mustbuild_store::{Digest, KeyUse, Unrecorded};
use std::path::{Path, PathBuf};

impl Coordinator<'_> {
    /// Keys the next batch of ready instances.
    pub(super) fn key_ready(&mut self, on_event: &mut dyn FnMut(Event)) -> Result<(), RunError> {
        let (wf, instances, store, options, session, tools, root) = (
            self.wf,
            self.instances,
            self.store,
            self.options,
            self.session,
            self.tools,
            self.root,
        );
        let Progress {
            outputs,
            waiting,
            dependents,
            runnable,
            ranks,
            ready,
            seen,
            keys,
            kinds,
            from_prior,
            prior_sources,
            taken,
            recorded_outputs,
            summary,
            ..
        } = &mut *self.progress;
        let mut batch: Vec<InstanceId> = ready.drain(..ready.len().min(self.batch_size)).collect();
        self.batch_size = (self.batch_size * 2).min(KEY_BATCH);
        // Keys known from the record, when the store still has their
        // realisations as recorded; the others are computed.
        let known: Vec<(InstanceId, Digest, Vec<Digest>)> = batch
            .iter()
            .filter(|id| !options.force.contains(&instances.get(**id).step))
            .filter(|id| {
                instances.get(**id).deps.iter().all(|d| {
                    outputs[d.index()].is_some()
                        && outputs[d.index()] == recorded_outputs[d.index()]
                })
            })
            .filter_map(|id| from_prior[id.index()].take().map(|(k, o)| (*id, k, o)))
            .collect();
        if !known.is_empty() {
            let ks: Vec<Digest> = known.iter().map(|k| k.1).collect();
            let realised = store.use_known_keys(session, &ks)?;
            let taken_before = taken.len();
            for ((id, key, recorded), realised) in known.into_iter().zip(realised) {
                let inst = instances.get(id);
                let step = wf.step(inst.step);
                let Some((digests, output_kinds)) =
                    realised.as_deref().and_then(|r| in_order(step, r))
                else {
                    continue;
                };
                if digests != recorded {
                    continue;
                }
                kinds[id.index()] = Some(output_kinds);
                for f in inst.inputs.iter().flatten() {
                    if let (FileRef::Source(p), true) = (f, options.noop.is_some())
                        && let Some(d) = prior_sources.get(p)
                    {
                        seen.inputs.entry(p.clone()).or_insert((*d, false));
                    }
                }
                keys[id.index()] = Some(key);
                taken.push(id);
                outputs[id.index()] = Some(recorded);
                summary.cached += 1;
                on_event(Event::Cached {
                    step: step.name.to_string(),
                    values: inst.values.clone(),
                });
                release(&dependents[id.index()], waiting, ready);
            }
            let now_taken: std::collections::HashSet<InstanceId> =
                taken[taken_before..].iter().copied().collect();
            batch.retain(|id| !now_taken.contains(id));
        }
        // The batch's source files, hashed on several threads and
        // cached in one transaction, before the keys read them.
        let sources: std::collections::BTreeSet<PathBuf> = batch
            .iter()
            .flat_map(|id| instances.get(*id).inputs.iter().flatten())
            .filter_map(|f| match f {
                FileRef::Source(p) => Some(wf.root.join(p)),
                FileRef::Output { .. } => None,
            })
            .collect();
        if sources.len() > 1 {
            let paths: Vec<&Path> = sources.iter().map(PathBuf::as_path).collect();
            store.file_digests(&paths);
        }
        let mut keyed = Vec::with_capacity(batch.len());
        for id in batch {
            let inst = instances.get(id);
            if let Some(material) = key_from_outputs(wf, instances, store, tools, outputs, id)? {
                if options.noop.is_some() {
                    for (path, digest, dir) in crate::keys::input_digests(&material) {
                        if !seen.inputs.contains_key(path) {
                            seen.inputs.insert(path.to_string(), (digest, dir));
                        }
                    }
                }
                let forced = options.force.contains(&inst.step);
                keyed.push((id, material, instance_label(&inst.values), forced));
            }
        }
        let uses: Vec<KeyUse<'_>> = keyed
            .iter()
            .map(|(id, material, label, forced)| KeyUse {
                material,
                pipeline: &wf.name,
                step: &wf.step(instances.get(*id).step).name,
                instance: label,
                lookup: !forced,
            })
            .collect();
        let resolved = store.use_keys(session, &uses)?;
        // Missing here: the remote caches may have them (looked up
        // together, checked, then realised here).
        let mut from_cache = std::collections::HashMap::new();
        if let Some(cache) = &options.cache {
            let wanted: Vec<Digest> = keyed
                .iter()
                .zip(&resolved)
                .filter(|((.., forced), used)| used.realised.is_none() && !forced)
                .map(|(_, used)| used.key)
                .collect();
            if !wanted.is_empty() {
                let fetched = cache.fetch_many(store, &wanted, session);
                for message in cache.take_warnings() {
                    on_event(Event::Warning { message });
                }
                from_cache = wanted
                    .into_iter()
                    .zip(fetched?)
                    .filter_map(|(key, outputs)| Some((key, outputs?)))
                    .collect();
            }
        }
        let mut materialised = Vec::new();
        for ((id, material, label, forced), used) in keyed.iter().zip(resolved) {
            let (key, mut realised) = (used.key, used.realised);
            let inst = instances.get(*id);
            if realised.is_none()
                && !forced
                && let Some(outputs) = from_cache.get(&key)
            {
                store.set_planned(session, &wf.step(inst.step).name, label, "reused")?;
                realised = Some(outputs.clone());
            }
            if realised.is_none()
                && let Some(previous) = used.previous
                && let Some(changed) = only_tools_or_env(store, &previous, material)?
            {
                let step = &wf.step(inst.step).name;
                summary
                    .unexpected
                    .push((crate::provenance::label(step, &inst.values), changed));
            }
            keys[id.index()] = Some(key);
            let step = wf.step(inst.step);
            match realised.and_then(|r| in_order(step, &r).map(|o| (r, o))) {
                Some((realised, (digests, output_kinds))) => {
                    let made = materialize_outputs(
                        (wf, instances, root),
                        store,
                        (*id, key),
                        &realised,
                        &[],
                        &Unrecorded::default(),
                        &mut materialised,
                        on_event,
                    );
                    if let Err(e) = made {
                        // What was put in place is remembered even so.
                        let _ = store.set_materialised_many(&materialised);
                        return Err(e);
                    }
                    outputs[id.index()] = Some(digests);
                    kinds[id.index()] = Some(output_kinds);
                    summary.cached += 1;
                    on_event(Event::Cached {
                        step: wf.step(inst.step).name.to_string(),
                        values: inst.values.clone(),
                    });
                    release(&dependents[id.index()], waiting, ready);
                }
                None => {
                    let rank = rank_for(runnable, ranks, *id, || {
                        upward_ranks(instances, dependents, &step_durations(wf, Some(store)))
                    });
                    runnable.push(
                        Runnable {
                            id: *id,
                            key,
                            forced: *forced,
                            attempt: 0,
                            memory: None,
                        },
                        rank,
                    )
                }
            }
        }
        store.set_materialised_many(&materialised)?;
        Ok(())
    }
}
