//! What a run would do, and why (`mustbuild run --dry-run`): for each instance,
//! whether its result is in the store, and otherwise what changed since its last
//! key — a field-by-field comparison of the two keys' material.

use crate::instantiate::{InstanceId, Instances};
use crate::keys::{key_from_outputs, resolve_tools};
use crate::run::{RunError, instance_label};
use mustbuild_lang::model::Workflow;
use mustbuild_store::{Digest, FieldChange, LocalStore};

/// What would happen to one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Its result is in the store.
    Cached,
    /// It would run, for these reasons.
    Run(Vec<String>),
    /// It depends on instances that would run: its key is known only then.
    After(Vec<String>),
}

/// The plan of every selected instance, in order.
pub fn plan(
    wf: &Workflow,
    instances: &Instances,
    store: &LocalStore,
    path_var: &str,
    selected: Option<&[bool]>,
    force: &[mustbuild_lang::model::StepId],
) -> Result<Vec<(InstanceId, Plan)>, RunError> {
    let tools = resolve_tools(wf, store, path_var)?;
    let mut outputs: Vec<Option<Vec<Digest>>> = vec![None; instances.all.len()];
    let mut out = Vec::new();
    for (i, inst) in instances.all.iter().enumerate() {
        if selected.is_some_and(|s| !s[i]) {
            continue;
        }
        let id = InstanceId(i as u32);
        let step = wf.step(inst.step);
        let Some(material) = key_from_outputs(wf, instances, store, &tools, &outputs, id)? else {
            let mut waiting: Vec<String> = inst
                .deps
                .iter()
                .filter(|d| outputs[d.index()].is_none())
                .map(|d| wf.step(instances.get(*d).step).name.to_string())
                .collect();
            waiting.dedup();
            out.push((id, Plan::After(waiting)));
            continue;
        };
        let key = material.key();
        let realised = if force.contains(&inst.step) {
            None
        } else {
            store.realisation(&key)?
        };
        if let Some((digests, _)) = realised.and_then(|r| crate::run::in_order(step, &r)) {
            outputs[i] = Some(digests);
            out.push((id, Plan::Cached));
            continue;
        }
        let reasons = if force.contains(&inst.step) {
            vec!["forced".to_string()]
        } else {
            match store.last_key(&wf.name, &step.name, &instance_label(&inst.values))? {
                None => vec!["new".to_string()],
                Some(last) if last == key => {
                    vec!["not in the store (it failed, or was collected)".to_string()]
                }
                Some(last) => match store.derivation(&last)? {
                    Some(before) => describe(&before.diff(&material)),
                    None => vec!["changed (the previous key's record was collected)".to_string()],
                },
            }
        };
        out.push((id, Plan::Run(reasons)));
    }
    Ok(out)
}

/// Field changes in words: "input `reads` changed", "param `bins` changed".
fn describe(changes: &[FieldChange]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in changes {
        let mut parts = c.path.splitn(2, '.');
        let head = parts.next().unwrap_or("");
        let rest = parts
            .next()
            .map(|r| r.split(['.', '[']).next().unwrap_or(r));
        let text = match (head, rest) {
            ("inputs", Some(name)) => format!("input `{name}` changed"),
            ("params", Some(name)) => format!("param `{name}` changed"),
            ("env", Some(name)) => format!("env `{name}` changed"),
            ("tools", Some(name)) => format!("tool `{name}` changed"),
            ("outputs", _) => "outputs changed".to_string(),
            ("command", _) => "command changed".to_string(),
            ("inputs", None) | ("params", None) | ("env", None) | ("tools", None) => {
                format!("{head} changed")
            }
            (other, _) => format!("{other} changed"),
        };
        if !out.contains(&text) {
            out.push(text);
        }
    }
    if out.is_empty() {
        out.push("changed".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mustbuild_store::Field;

    fn change(path: &str) -> FieldChange {
        FieldChange {
            path: path.to_string(),
            before: Some(Field::Integer(1)),
            after: Some(Field::Integer(2)),
        }
    }

    #[test]
    fn reasons_in_words() {
        let c = [
            change("inputs.reads[0].digest"),
            change("inputs.reads[1].path"),
            change("params.bins"),
            change("command"),
        ];
        assert_eq!(
            describe(&c),
            [
                "input `reads` changed",
                "param `bins` changed",
                "command changed"
            ]
        );
    }
}
