//! Property: formatting a pipeline and checking it again gives the same checked
//! workflow; formatting is idempotent; no comment is lost.
//!
//! Pipelines are generated valid, then written in a random, messy layout
//! (spacing, `;`, line continuations, comments, blank lines, quoting styles).

use mustbuild_lang::{MemoryFiles, format_source, load_with};
use proptest::prelude::*;
use std::path::Path;

#[derive(Debug, Clone)]
struct StepSpec {
    fan: Option<Vec<u8>>,
    outs: usize,
    /// Indices of earlier steps to read from (taken modulo the step's index).
    reads: Vec<usize>,
    words: Vec<String>,
    cpus: Option<u8>,
    memory: Option<u16>,
    retry: Option<u8>,
    uses_param: bool,
}

fn step_spec() -> impl Strategy<Value = StepSpec> {
    (
        prop::option::of(prop::collection::vec(0u8..20, 1..4)),
        1usize..3,
        prop::collection::vec(any::<usize>(), 0..3),
        prop::collection::vec("[a-z]{1,6}", 1..4),
        prop::option::of(1u8..16),
        prop::option::of(1u16..4096),
        prop::option::of(0u8..5),
        any::<bool>(),
    )
        .prop_map(
            |(fan, outs, reads, words, cpus, memory, retry, uses_param)| StepSpec {
                fan: fan.map(|mut v| {
                    v.sort_unstable();
                    v.dedup();
                    v
                }),
                outs,
                reads,
                words,
                cpus,
                memory,
                retry,
                uses_param,
            },
        )
}

/// Draws layout choices from a byte stream (cycled).
struct Style<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Style<'_> {
    fn pick(&mut self, n: u8) -> u8 {
        if self.bytes.is_empty() {
            return 0;
        }
        let b = self.bytes[self.at % self.bytes.len()];
        self.at += 1;
        b % n
    }

    fn space(&mut self) -> &'static str {
        [
            " ",
            "  ",
            "\t",
            " /* c */ ",
            " \\\n      ",
            " \\ // why\n  ",
        ][self.pick(6) as usize]
    }

    fn end(&mut self) -> &'static str {
        ["\n", ";\n", "\n\n\n", " // trailing\n", "; "][self.pick(5) as usize]
    }

    fn indent(&mut self) -> &'static str {
        ["", "  ", "        ", "\t"][self.pick(4) as usize]
    }

    /// A string value in one of KDL's spellings (all decode to `s`).
    fn string(&mut self, s: &str, bare_ok: bool) -> String {
        match self.pick(if bare_ok { 3 } else { 2 }) {
            0 => format!("\"{s}\""),
            1 => format!("#\"{s}\"#"),
            _ => s.to_string(),
        }
    }

    fn comment_line(&mut self) -> &'static str {
        [
            "",
            "// a comment\n",
            "/* block\n   comment */\n",
            "\n",
            "/- param disabled 1\n",
        ][self.pick(5) as usize]
    }
}

fn render(steps: &[StepSpec], style_bytes: &[u8]) -> String {
    let mut st = Style {
        bytes: style_bytes,
        at: 0,
    };
    let mut t = String::new();
    t.push_str(st.comment_line());
    t.push_str(&format!("pipeline{}\"gen\"{}", st.space(), st.end()));
    t.push_str(&format!(
        "param{}threshold{}0.050{}",
        st.space(),
        st.space(),
        st.end()
    ));
    t.push_str(st.comment_line());
    t.push_str(&format!(
        "input{}data{}{}{}",
        st.space(),
        st.space(),
        st.string("data/a.csv", false),
        st.end()
    ));
    t.push_str(&format!(
        "env{}LC_ALL{}\"C\"{}",
        st.space(),
        st.space(),
        st.end()
    ));
    for (i, s) in steps.iter().enumerate() {
        t.push_str(st.comment_line());
        t.push_str(&format!(
            "step{}s{i}{}{{{}",
            st.space(),
            st.space(),
            ["\n", " // open\n", " "][st.pick(3) as usize]
        ));
        let mut children: Vec<String> = Vec::new();
        if let Some(values) = &s.fan {
            let vals: Vec<String> = values
                .iter()
                .map(|v| st.string(&format!("v{v}"), true))
                .collect();
            children.push(format!(
                "foreach{}k{i}{}{}",
                st.space(),
                st.space(),
                vals.join(st.space())
            ));
        }
        children.push(format!("in{}src=data", st.space()));
        for (j, r) in s.reads.iter().enumerate() {
            if i > 0 {
                children.push(format!("in{}r{j}=s{}.o0", st.space(), r % i));
            }
        }
        let suffix = if s.fan.is_some() {
            format!("-{{k{i}}}")
        } else {
            String::new()
        };
        for o in 0..s.outs {
            let path = st.string(&format!("out/s{i}/o{o}{suffix}.txt"), false);
            children.push(format!("out{}o{o}={path}", st.space()));
        }
        let param = if s.uses_param {
            " {param.threshold}"
        } else {
            ""
        };
        let cmd = format!("{} {{in.src}}{param} > {{out.o0}}", s.words.join(" "));
        children.push(format!("run{}{}", st.space(), st.string(&cmd, false)));
        let mut res = Vec::new();
        if let Some(c) = s.cpus {
            res.push(format!("cpus={c}"));
        }
        if let Some(m) = s.memory {
            res.push(format!("memory=\"{m}MiB\""));
        }
        if !res.is_empty() {
            children.push(format!("resources{}{}", st.space(), res.join(st.space())));
        }
        if let Some(r) = s.retry {
            children.push(format!("retry {r}"));
        }
        for c in children {
            t.push_str(st.indent());
            t.push_str(&c);
            t.push_str(st.end());
            if st.pick(4) == 0 {
                t.push_str("    // between children\n");
            }
        }
        t.push_str(&format!(
            "}}{}",
            ["\n", "\n\n", " // closed\n"][st.pick(3) as usize]
        ));
    }
    t
}

fn comments(text: &str) -> Vec<&str> {
    [
        "// a comment",
        "/* block\n   comment */",
        "// trailing",
        "// open",
        "// closed",
        "// between children",
        "// why",
        "/* c */",
    ]
    .into_iter()
    .filter(|c| text.contains(c))
    .collect()
}

fn check(text: &str) -> serde_json::Value {
    let mut files = MemoryFiles::new();
    files.insert("p/pipeline.kdl", text);
    let loaded = load_with(&files, Path::new("p/pipeline.kdl"));
    let errors: Vec<String> = loaded
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.one_line(&loaded.sources))
        .collect();
    assert!(
        errors.is_empty(),
        "generated pipeline does not check:\n{text}\n{errors:#?}"
    );
    serde_json::to_value(loaded.workflow.expect("no errors, so a workflow")).expect("serializes")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn formatting_keeps_the_workflow_and_the_comments(
        steps in prop::collection::vec(step_spec(), 1..8),
        style in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let text = render(&steps, &style);
        let before = check(&text);
        let formatted = format_source(&text).expect("a valid pipeline formats");
        let after = check(&formatted);
        prop_assert_eq!(&before, &after, "formatted:\n{}", formatted);
        let again = format_source(&formatted).expect("formatted text formats");
        prop_assert_eq!(&again, &formatted, "formatting is not idempotent");
        prop_assert_eq!(comments(&text), comments(&formatted), "a comment was lost:\n{}\n---\n{}", text, formatted);
    }
}

#[test]
fn formatting_the_quickstart_changes_nothing() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/quickstart/pipeline.kdl"
    ))
    .unwrap();
    assert_eq!(format_source(&text).as_deref(), Some(text.as_str()));
}
