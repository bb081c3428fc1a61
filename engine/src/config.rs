//! Configuration: the user's file (`$MUSTBUILD_CONFIG`, else
//! `$XDG_CONFIG_HOME/mustbuild/config.kdl`, else `~/.config/mustbuild/config.kdl`),
//! then `mustbuild.kdl` beside the pipeline, each overriding the one before.
//! It holds the remote caches and the energy figures; per host, a `host
//! "PATTERN"` block (`*` matches any run of characters) overrides the energy
//! figures on the hosts it names:
//!
//! ```kdl
//! cache {
//!     url "s3://results/lab?endpoint=https://s3.must.example&region=us-east-1"
//!     url "file:///sps/lab/cache"     // several: tried in order
//!     trusted-keys "lab-1:Nx4…" "ci:Q2…"
//!     secret-key-file "/home/me/.config/mustbuild/lab-1.secret"
//!     push "always"                  // or "on-demand", "never"
//! }
//! energy {
//!     core-watts 12            // per busy core (the model's)
//!     memory-watts-per-gb 0.3725
//!     pue 1.67                 // the facility's power usage effectiveness
//!     carbon-intensity 475     // gCO2e per kWh
//!     host "gpu*.must.example" {
//!         core-watts 9.5
//!     }
//! }
//! executor "htcondor" {            // or "local" (the default)
//!     accounting-group "group_must.lab"
//!     requirements "OpSysAndVer == \"AlmaLinux9\""
//!     submit "+wishedAcctGroup = \"lab\""   // more submit commands, as written
//!     max-queued 2000              // jobs queued or running at once
//!     held-timeout 600             // seconds a job may stay held before its step fails
//!     bin "/usr/bin"               // where condor_submit is, if not on PATH
//! }
//! executor "slurm" {               // the same, for Slurm
//!     partition "cpu"
//!     account "mylab"
//!     qos "normal"
//!     constraint "avx2"
//!     sbatch "--exclusive"         // more sbatch options, as written
//!     max-queued 2000
//! }
//! ```

use crate::stats::Footprint;
use mustbuild_executors::energy::Model;
use std::path::{Path, PathBuf};

/// A configuration file that cannot be used: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {message}", path.display())]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
}

/// The `cache { … }` settings. A file that names `url`s replaces the list of
/// the files before it; trusted keys add up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheConfig {
    pub urls: Vec<String>,
    pub trusted_keys: Vec<String>,
    pub secret_key_file: Option<PathBuf>,
    pub push: Option<crate::cache::Push>,
}

/// The `executor "NAME" { … }` settings (the last file's block wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorConfig {
    /// `local` or `htcondor`.
    pub name: String,
    pub accounting_group: Option<String>,
    pub requirements: Option<String>,
    pub submit: Vec<String>,
    pub max_queued: Option<usize>,
    pub held_timeout_s: Option<u64>,
    pub bin: Option<PathBuf>,
    /// Slurm's: `--partition`, `--account`, `--qos`, `--constraint`, and
    /// more `sbatch` options (`sbatch "--exclusive"`).
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub constraint: Option<String>,
    pub sbatch: Vec<String>,
}

/// The executors `executor` may name.
pub const EXECUTORS: &[&str] = &["local", "htcondor", "slurm"];

/// What configuration sets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Config {
    pub cache: CacheConfig,
    pub executor: Option<ExecutorConfig>,
    pub model: Model,
    pub footprint: Footprint,
    /// The files read, in order.
    pub files: Vec<PathBuf>,
}

/// The user's configuration file, if there is one.
pub fn user_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MUSTBUILD_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("mustbuild").join("config.kdl"))
}

/// The configuration for a pipeline in `folder` (none: the user's only), on `host`.
pub fn load(folder: Option<&Path>, host: &str) -> Result<Config, ConfigError> {
    let mut config = Config::default();
    let files = user_file()
        .into_iter()
        .chain(folder.map(|f| f.join("mustbuild.kdl")));
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        apply(&mut config, &file, &text, host)?;
        config.files.push(file);
    }
    Ok(config)
}

/// Line and column (1-based, in characters) of byte `offset` of `text`.
fn place(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Whether `host` matches `pattern`, where `*` matches any run of characters.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == host;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !host.starts_with(first) || host.len() < first.len() + last.len() || !host.ends_with(last) {
        return false;
    }
    let mut rest = &host[first.len()..host.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

const ENERGY_KEYS: &str = "core-watts, memory-watts-per-gb, pue, carbon-intensity, host";

fn apply(config: &mut Config, path: &Path, text: &str, host: &str) -> Result<(), ConfigError> {
    let error = |offset: usize, message: String, hint: Option<String>| {
        let (line, column) = place(text, offset);
        ConfigError {
            path: path.to_path_buf(),
            line,
            column,
            message,
            hint,
        }
    };
    let doc = kdl::KdlDocument::parse(text).map_err(|e| {
        let d = e.diagnostics.first();
        error(
            d.map_or(0, |d| d.span.offset()),
            d.and_then(|d| d.message.clone())
                .unwrap_or_else(|| "not valid KDL".to_string()),
            d.and_then(|d| d.help.clone()),
        )
    })?;
    for node in doc.nodes() {
        match node.name().value() {
            "energy" => {
                let Some(children) = node.children().filter(|_| node.entries().is_empty()) else {
                    return Err(error(
                        node.span().offset(),
                        "`energy` takes a block of settings".to_string(),
                        Some("e.g. energy { … }, one setting per line".to_string()),
                    ));
                };
                energy(config, children, host, &error)?;
            }
            "cache" => {
                let Some(children) = node.children().filter(|_| node.entries().is_empty()) else {
                    return Err(error(
                        node.span().offset(),
                        "`cache` takes a block of settings".to_string(),
                        Some("e.g. cache { … }, one setting per line".to_string()),
                    ));
                };
                cache(&mut config.cache, children, path, &error)?;
            }
            "executor" => config.executor = Some(executor(node, &error)?),
            other => {
                return Err(error(
                    node.span().offset(),
                    format!("unknown setting `{other}`"),
                    Some(
                        "this version knows `cache { … }`, `energy { … }` and `executor \"NAME\" { … }`"
                            .to_string(),
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn strings(node: &kdl::KdlNode) -> Option<Vec<String>> {
    node.entries()
        .iter()
        .map(|e| match e.name() {
            None => e.value().as_string().map(str::to_string),
            Some(_) => None,
        })
        .collect()
}

fn cache(
    config: &mut CacheConfig,
    block: &kdl::KdlDocument,
    file: &Path,
    error: &MakeError<'_>,
) -> Result<(), ConfigError> {
    let mut urls = Vec::new();
    for node in block.nodes() {
        let name = node.name().value();
        let values = strings(node).filter(|v| !v.is_empty());
        let Some(values) = values else {
            return Err(error(
                node.span().offset(),
                format!("`{name}` takes one or more strings"),
                Some(format!("e.g. {name} \"…\"")),
            ));
        };
        let one = |what: &str| -> Result<String, ConfigError> {
            match values.as_slice() {
                [v] => Ok(v.clone()),
                _ => Err(error(
                    node.span().offset(),
                    format!("`{name}` takes one {what}"),
                    None,
                )),
            }
        };
        match name {
            "url" => urls.extend(values.iter().cloned()),
            "trusted-keys" => config.trusted_keys.extend(values.iter().cloned()),
            "secret-key-file" => {
                let p = PathBuf::from(one("path")?);
                // Relative to the file that names it.
                let p = if p.is_relative() {
                    file.parent().unwrap_or(Path::new(".")).join(p)
                } else {
                    p
                };
                config.secret_key_file = Some(p);
            }
            "push" => {
                config.push = Some(match one("policy")?.as_str() {
                    "always" => crate::cache::Push::Always,
                    "on-demand" => crate::cache::Push::OnDemand,
                    "never" => crate::cache::Push::Never,
                    other => {
                        return Err(error(
                            node.span().offset(),
                            format!("unknown push policy `{other}`"),
                            Some("always, on-demand or never".to_string()),
                        ));
                    }
                });
            }
            other => {
                return Err(error(
                    node.span().offset(),
                    format!("unknown cache setting `{other}`"),
                    Some("known: url, trusted-keys, secret-key-file, push".to_string()),
                ));
            }
        }
    }
    if !urls.is_empty() {
        config.urls = urls;
    }
    Ok(())
}

fn executor(node: &kdl::KdlNode, error: &MakeError<'_>) -> Result<ExecutorConfig, ConfigError> {
    let name = match strings(node).as_deref() {
        Some([name]) if EXECUTORS.contains(&name.as_str()) => name.clone(),
        Some([name]) => {
            return Err(error(
                node.entries()[0].span().offset(),
                format!("unknown executor `{name}`"),
                Some(format!("known: {}", EXECUTORS.join(", "))),
            ));
        }
        _ => {
            return Err(error(
                node.span().offset(),
                "`executor` takes one name".to_string(),
                Some("e.g. executor \"htcondor\" { accounting-group \"group_lab\" }".to_string()),
            ));
        }
    };
    let mut config = ExecutorConfig {
        name,
        accounting_group: None,
        requirements: None,
        submit: Vec::new(),
        max_queued: None,
        held_timeout_s: None,
        bin: None,
        partition: None,
        account: None,
        qos: None,
        constraint: None,
        sbatch: Vec::new(),
    };
    for n in node.children().map(|c| c.nodes()).unwrap_or_default() {
        let setting = n.name().value();
        let text = || match strings(n).as_deref() {
            Some([v]) => Ok(v.clone()),
            _ => Err(error(
                n.span().offset(),
                format!("`{setting}` takes one string"),
                None,
            )),
        };
        let count = || match n.entries() {
            [e] if e.name().is_none() => match e.value() {
                kdl::KdlValue::Integer(i) if *i > 0 => Ok(*i as u64),
                _ => Err(error(
                    e.span().offset(),
                    format!("`{setting}` takes a whole number above 0"),
                    None,
                )),
            },
            _ => Err(error(
                n.span().offset(),
                format!("`{setting}` takes one number"),
                None,
            )),
        };
        match setting {
            "accounting-group" => config.accounting_group = Some(text()?),
            "requirements" => config.requirements = Some(text()?),
            "submit" => config.submit.push(text()?),
            "max-queued" => config.max_queued = Some(count()? as usize),
            "held-timeout" => config.held_timeout_s = Some(count()?),
            "bin" => config.bin = Some(PathBuf::from(text()?)),
            "partition" => config.partition = Some(text()?),
            "account" => config.account = Some(text()?),
            "qos" => config.qos = Some(text()?),
            "constraint" => config.constraint = Some(text()?),
            "sbatch" => config.sbatch.push(text()?),
            other => {
                return Err(error(
                    n.span().offset(),
                    format!("unknown executor setting `{other}`"),
                    Some(
                        "known: accounting-group, requirements, submit, held-timeout (HTCondor); partition, account, qos, constraint, sbatch (Slurm); max-queued, bin"
                            .to_string(),
                    ),
                ));
            }
        }
    }
    Ok(config)
}

type MakeError<'a> = dyn Fn(usize, String, Option<String>) -> ConfigError + 'a;

fn energy(
    config: &mut Config,
    block: &kdl::KdlDocument,
    host: &str,
    error: &MakeError<'_>,
) -> Result<(), ConfigError> {
    // The general figures first, then the blocks of the hosts that match.
    let mut hosts = Vec::new();
    for node in block.nodes() {
        let name = node.name().value();
        if name == "host" {
            let pattern = node.entries().first().and_then(|e| e.value().as_string());
            let Some(pattern) = pattern else {
                return Err(error(
                    node.span().offset(),
                    "`host` needs a name pattern".to_string(),
                    Some("e.g. host \"node*.cluster\" { core-watts 9 }".to_string()),
                ));
            };
            hosts.push((pattern, node));
            continue;
        }
        figure(config, node, error)?;
    }
    for (pattern, node) in hosts {
        if host_matches(pattern, host)
            && let Some(children) = node.children()
        {
            for n in children.nodes() {
                if n.name().value() == "host" {
                    return Err(error(
                        n.span().offset(),
                        "a `host` block inside a `host` block".to_string(),
                        None,
                    ));
                }
                figure(config, n, error)?;
            }
        }
    }
    Ok(())
}

/// One `NAME NUMBER` line of an energy block.
fn figure(
    config: &mut Config,
    node: &kdl::KdlNode,
    error: &MakeError<'_>,
) -> Result<(), ConfigError> {
    let name = node.name().value();
    let value = node.entries().first().and_then(|e| match e.value() {
        kdl::KdlValue::Integer(i) => Some(*i as f64),
        kdl::KdlValue::Float(f) => Some(*f),
        _ => None,
    });
    let target = match name {
        "core-watts" => &mut config.model.core_watts,
        "memory-watts-per-gb" => &mut config.model.memory_watts_per_gb,
        "pue" => &mut config.footprint.pue,
        "carbon-intensity" => &mut config.footprint.carbon_intensity,
        other => {
            return Err(error(
                node.span().offset(),
                format!("unknown energy setting `{other}`"),
                Some(format!("known: {ENERGY_KEYS}")),
            ));
        }
    };
    match value {
        Some(v) if v.is_finite() && v > 0.0 && node.entries().len() == 1 => {
            *target = v;
            Ok(())
        }
        _ => Err(error(
            node.span().offset(),
            format!("`{name}` takes one positive number"),
            Some(format!("e.g. {name} 1.5")),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, host: &str) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        apply(&mut c, Path::new("mustbuild.kdl"), text, host).map(|()| c)
    }

    #[test]
    fn figures_and_the_blocks_of_matching_hosts() {
        let text = "energy {\n  core-watts 10\n  pue 1.2\n  host \"gpu*\" {\n    core-watts 20\n  }\n  carbon-intensity 52\n}\n";
        let c = parse(text, "login1").unwrap();
        assert_eq!(c.model.core_watts, 10.0);
        assert_eq!((c.footprint.pue, c.footprint.carbon_intensity), (1.2, 52.0));
        assert_eq!(
            c.model.memory_watts_per_gb,
            Model::default().memory_watts_per_gb
        );
        let c = parse(text, "gpu07").unwrap();
        assert_eq!(c.model.core_watts, 20.0);
    }

    #[test]
    fn mistakes_point_at_their_line_and_column() {
        let e = parse("energy {\n  core-watt 10\n}\n", "h").unwrap_err();
        assert_eq!((e.line, e.column), (2, 3));
        assert_eq!(
            e.to_string(),
            "mustbuild.kdl:2:3: unknown energy setting `core-watt`"
        );
        assert!(e.hint.unwrap().contains("core-watts"));
        let e = parse("energy {\n  pue \"high\"\n}\n", "h").unwrap_err();
        assert_eq!(e.message, "`pue` takes one positive number");
        let e = parse("energy {\n  pue -1\n}\n", "h").unwrap_err();
        assert_eq!(e.line, 2);
        let e = parse("cache \"s3://x\"\n", "h").unwrap_err();
        assert_eq!((e.line, e.column), (1, 1));
        assert_eq!(e.message, "`cache` takes a block of settings");
        let e = parse("energy 5\n", "h").unwrap_err();
        assert_eq!(e.message, "`energy` takes a block of settings");
        let e = parse("\nscheduler \"htcondor\"\n", "h").unwrap_err();
        assert_eq!(
            (e.line, e.message.as_str()),
            (2, "unknown setting `scheduler`")
        );
        let e = parse("executor \"slurmm\"\n", "h").unwrap_err();
        assert_eq!((e.line, e.column), (1, 10), "{e}");
        assert_eq!(e.message, "unknown executor `slurmm`");
        assert_eq!(e.hint.as_deref(), Some("known: local, htcondor, slurm"));
        let e = parse("executor \"htcondor\" {\n  max-queued 0\n}\n", "h").unwrap_err();
        assert_eq!(
            (e.line, e.message.as_str()),
            (2, "`max-queued` takes a whole number above 0")
        );
        let e = parse("executor \"htcondor\" {\n  acounting-group \"g\"\n}\n", "h").unwrap_err();
        assert_eq!(e.message, "unknown executor setting `acounting-group`");
        // An unclosed block: at the brace that opens it.
        let e = parse("energy {\n  pue 1.2\n", "h").unwrap_err();
        assert_eq!((e.line, e.column), (1, 8), "{e}");
        assert!(e.message.contains("closing"), "{e}");
    }

    #[test]
    fn executor_settings() {
        let text = "executor \"htcondor\" {\n  accounting-group \"group_must.lab\"\n  requirements \"Memory > 4000\"\n  submit \"+wishedAcctGroup = \\\"lab\\\"\"\n  submit \"priority = 5\"\n  max-queued 500\n  held-timeout 60\n  bin \"/opt/condor/bin\"\n}\n";
        let e = parse(text, "h").unwrap().executor.unwrap();
        assert_eq!(e.name, "htcondor");
        assert_eq!(e.accounting_group.as_deref(), Some("group_must.lab"));
        assert_eq!(e.requirements.as_deref(), Some("Memory > 4000"));
        assert_eq!(e.submit, ["+wishedAcctGroup = \"lab\"", "priority = 5"]);
        assert_eq!((e.max_queued, e.held_timeout_s), (Some(500), Some(60)));
        assert_eq!(e.bin, Some(PathBuf::from("/opt/condor/bin")));
        assert_eq!(
            parse("executor \"local\"\n", "h")
                .unwrap()
                .executor
                .unwrap()
                .name,
            "local"
        );
        let text = "executor \"slurm\" {\n  partition \"cpu\"\n  account \"lab\"\n  qos \"normal\"\n  constraint \"avx2\"\n  sbatch \"--exclusive\"\n}\n";
        let e = parse(text, "h").unwrap().executor.unwrap();
        let named = [&e.partition, &e.account, &e.qos, &e.constraint];
        assert_eq!(e.name, "slurm");
        assert_eq!(
            named.map(|v| v.as_deref()),
            [Some("cpu"), Some("lab"), Some("normal"), Some("avx2")]
        );
        assert_eq!(e.sbatch, ["--exclusive"]);
    }

    #[test]
    fn cache_settings() {
        let text = "cache {\n  url \"file:///a\" \"s3://b/p\"\n  trusted-keys \"k1:AA\"\n  trusted-keys \"k2:BB\"\n  secret-key-file \"keys/me.secret\"\n  push \"on-demand\"\n}\n";
        let c = parse(text, "h").unwrap().cache;
        assert_eq!(c.urls, ["file:///a", "s3://b/p"]);
        assert_eq!(c.trusted_keys, ["k1:AA", "k2:BB"]);
        assert_eq!(c.secret_key_file, Some(PathBuf::from("keys/me.secret")));
        assert_eq!(c.push, Some(crate::cache::Push::OnDemand));
        let e = parse("cache {\n  push \"sometimes\"\n}\n", "h").unwrap_err();
        assert_eq!(
            (e.line, e.message.as_str()),
            (2, "unknown push policy `sometimes`")
        );
        let e = parse("cache {\n  url 3\n}\n", "h").unwrap_err();
        assert_eq!(e.message, "`url` takes one or more strings");
    }

    #[test]
    fn host_patterns() {
        assert!(host_matches("node*", "node12"));
        assert!(host_matches("*.must.example", "gpu3.must.example"));
        assert!(host_matches("a*b*c", "a-x-b-y-c"));
        assert!(!host_matches("a*b*c", "a-x-c"));
        assert!(host_matches("login1", "login1"));
        assert!(!host_matches("login1", "login2"));
        assert!(!host_matches("ab*ba", "aba"));
    }
}
