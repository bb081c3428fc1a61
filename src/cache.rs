//! The remote cache on the command line: `run --cache URL [--require-cache]`,
//! and `mustbuild cache keygen | push | ls | verify`.

use crate::exit;
use mustbuild_engine::cache::{Cache, Push};
use mustbuild_engine::config::CacheConfig;
use mustbuild_store::remote::sign::{PublicKey, SecretKey};
use mustbuild_store::remote::{Pulled, Remote};
use mustbuild_store::{Digest, LocalStore};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What `run` takes about caches.
#[derive(clap::Args, Debug, Default)]
pub struct CacheFlags {
    /// A remote cache (s3://BUCKET/PREFIX?endpoint=URL&region=R or file:///PATH);
    /// repeatable, tried in order [default: `cache { url … }` in mustbuild.kdl
    /// or the user's config.kdl].
    #[arg(long = "cache", value_name = "URL")]
    pub urls: Vec<String>,
    /// A cache that cannot be used is an error (for CI), not a warning.
    #[arg(long)]
    pub require_cache: bool,
}

#[derive(clap::Subcommand)]
pub enum CacheCommand {
    /// Make a signing key pair: NAME.secret (keep it) and NAME.public (give it
    /// to those who should trust your results: their `trusted-keys`).
    Keygen {
        /// The key's name, e.g. lab-1 or ci (letters, digits, `.-_`).
        name: String,
        /// Where to write the two files.
        #[arg(short = 'o', long, default_value = ".")]
        output: PathBuf,
    },
    /// Send the results a run used to a cache, signed with the secret key.
    Push {
        /// The cache [default: the first configured].
        url: Option<String>,
        /// The run [default: the latest].
        #[arg(long, value_name = "ID")]
        run: Option<i64>,
        /// The secret key file [default: `secret-key-file` in the configuration].
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        #[arg(long, value_name = "PATH")]
        store: Option<PathBuf>,
    },
    /// List the realisations a cache holds, with who signed each.
    Ls {
        /// The cache [default: the first configured].
        url: Option<String>,
    },
    /// Take the realisations a cache holds into the local store, checked as a
    /// run checks them (to work offline, or to warm a node's store).
    Pull {
        /// The cache [default: the first configured].
        url: Option<String>,
        /// Only the keys starting with these hex prefixes (as `cache ls` shows
        /// them) [default: all].
        #[arg(long = "key", value_name = "PREFIX")]
        keys: Vec<String>,
        #[arg(long, value_name = "PATH")]
        store: Option<PathBuf>,
    },
    /// Fetch and check every realisation a cache holds (signatures against the
    /// trusted keys, every object against its digest), storing nothing.
    Verify {
        /// The cache [default: the first configured].
        url: Option<String>,
    },
}

fn read_key_file(path: &Path) -> Result<SecretKey, u8> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        tell!("error: cannot read the secret key {}: {e}", path.display());
        exit::ENVIRONMENT
    })?;
    SecretKey::parse(&text).map_err(|e| {
        tell!("error: {}: {e}", path.display());
        exit::INVALID
    })
}

fn trusted(config: &CacheConfig) -> Result<Vec<PublicKey>, u8> {
    config
        .trusted_keys
        .iter()
        .map(|k| {
            PublicKey::parse(k).map_err(|e| {
                tell!("error: trusted-keys: {e}");
                exit::INVALID
            })
        })
        .collect()
}

fn urls<'a>(flags: &'a CacheFlags, config: &'a CacheConfig) -> &'a [String] {
    if flags.urls.is_empty() {
        &config.urls
    } else {
        &flags.urls
    }
}

/// What can be said of the cache flags before anything is opened:
/// `--require-cache` with no cache set is an error, even for a no-op.
pub fn check_flags(flags: &CacheFlags, config: &CacheConfig) -> Result<(), u8> {
    if flags.require_cache && urls(flags, config).is_empty() {
        tell!(
            "error: --require-cache, but no cache is set (--cache URL, or `cache {{ url … }}` in mustbuild.kdl)"
        );
        return Err(exit::USAGE);
    }
    Ok(())
}

/// The caches a run uses: `--cache`, else the configuration's (after
/// [`check_flags`]). A cache whose URL cannot be opened is skipped with a
/// warning (an error with `require`).
pub fn for_run(flags: &CacheFlags, config: &CacheConfig) -> Result<Option<Arc<Cache>>, u8> {
    let urls = urls(flags, config);
    if urls.is_empty() {
        return Ok(None);
    }
    let mut remotes = Vec::new();
    for url in urls {
        match Remote::open(url) {
            Ok(r) => remotes.push(r),
            Err(e) if flags.require_cache => {
                tell!("error: {e}");
                return Err(exit::ENVIRONMENT);
            }
            Err(e) => tell!("warning: {e}; going on without it"),
        }
    }
    let signer = match &config.secret_key_file {
        Some(p) => Some(read_key_file(p)?),
        None => None,
    };
    Ok(Some(Arc::new(Cache::new(
        remotes,
        trusted(config)?,
        signer,
        config.push.unwrap_or(Push::Always),
        flags.require_cache,
    ))))
}

fn remote(url: Option<String>, config: &CacheConfig) -> Result<Remote, u8> {
    let Some(url) = url.or_else(|| config.urls.first().cloned()) else {
        tell!(
            "error: no cache given, and none configured (`cache {{ url … }}` in mustbuild.kdl or ~/.config/mustbuild/config.kdl)"
        );
        return Err(exit::USAGE);
    };
    Remote::open(&url).map_err(|e| {
        tell!("error: {e}");
        exit::ENVIRONMENT
    })
}

pub fn command(command: CacheCommand) -> u8 {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let config = match crate::config(Some(&cwd)) {
        Ok(c) => c.cache,
        Err(code) => return code,
    };
    let result = match command {
        CacheCommand::Keygen { name, output } => keygen(&name, &output),
        CacheCommand::Push {
            url,
            run,
            key,
            store,
        } => push(url, run, key, store, &config),
        CacheCommand::Ls { url } => ls(url, &config),
        CacheCommand::Pull { url, keys, store } => pull(url, &keys, store, &config),
        CacheCommand::Verify { url } => verify(url, &config),
    };
    result.unwrap_or_else(|code| code)
}

fn keygen(name: &str, folder: &Path) -> Result<u8, u8> {
    let secret = SecretKey::generate(name).map_err(|e| {
        tell!("error: {e}");
        exit::INVALID
    })?;
    let secret_path = folder.join(format!("{name}.secret"));
    let public_path = folder.join(format!("{name}.public"));
    for p in [&secret_path, &public_path] {
        if p.exists() {
            tell!("error: {} exists: a new key would replace it", p.display());
            return Err(exit::ENVIRONMENT);
        }
    }
    let write = |path: &Path, text: String, mode: u32| {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .and_then(|mut f| f.write_all(format!("{text}\n").as_bytes()))
            .map_err(|e| {
                tell!("error: cannot write {}: {e}", path.display());
                exit::ENVIRONMENT
            })
    };
    write(&secret_path, secret.to_text(), 0o600)?;
    write(&public_path, secret.public().to_text(), 0o644)?;
    tell!(
        "wrote {} (keep it: `secret-key-file` in the configuration) and {}",
        secret_path.display(),
        public_path.display()
    );
    outln!("{}", secret.public().to_text());
    Ok(exit::OK)
}

fn push(
    url: Option<String>,
    run: Option<i64>,
    key: Option<PathBuf>,
    store: Option<PathBuf>,
    config: &CacheConfig,
) -> Result<u8, u8> {
    let remote = remote(url, config)?;
    let Some(key_file) = key.or_else(|| config.secret_key_file.clone()) else {
        tell!(
            "error: no secret key to sign with (--key FILE, or `secret-key-file` in the configuration; `mustbuild cache keygen NAME` makes one)"
        );
        return Err(exit::USAGE);
    };
    let signer = read_key_file(&key_file)?;
    let local = crate::provenance::open(store)?;
    let failed = |e: &dyn std::fmt::Display| {
        tell!("error: {e}");
        exit::ENVIRONMENT
    };
    let session = match run {
        Some(id) => Some(id),
        None => local
            .sessions(1)
            .map_err(|e| failed(&e))?
            .first()
            .map(|s| s.id),
    };
    let Some(session) = session else {
        return Err(crate::stats::no_run(run));
    };
    let keys = local.session_keys(session).map_err(|e| failed(&e))?;
    let mut realised = Vec::with_capacity(keys.len());
    for k in keys {
        let outputs = local.realised(&k).map_err(|e| failed(&e))?;
        if !outputs.is_empty() {
            realised.push((k, outputs));
        }
    }
    let mut pushed = 0;
    for done in remote.push_many(&local, &realised, &signer) {
        done.map_err(|e| failed(&e))?;
        pushed += 1;
    }
    tell!(
        "pushed {pushed} realisations of run {session} to {}, signed by `{}`",
        remote.url(),
        signer.name
    );
    Ok(exit::OK)
}

fn ls(url: Option<String>, config: &CacheConfig) -> Result<u8, u8> {
    let remote = remote(url, config)?;
    let failed = |e: &dyn std::fmt::Display| {
        tell!("error: {e}");
        exit::ENVIRONMENT
    };
    for key in remote.keys().map_err(|e| failed(&e))? {
        let record = remote.record(&key).map_err(|e| failed(&e))?;
        let (outputs, signers) = match &record {
            Some(r) => (
                r.outputs
                    .iter()
                    .map(|o| format!("{} {}", o.name, crate::bytes(o.size)))
                    .collect::<Vec<_>>()
                    .join(", "),
                r.signatures
                    .iter()
                    .map(|s| s.key.clone())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            None => ("(not a record of this format)".into(), String::new()),
        };
        let signers = if signers.is_empty() {
            "unsigned".to_string()
        } else {
            format!("signed by {signers}")
        };
        outln!("{}  {outputs}  ({signers})", key.short());
    }
    Ok(exit::OK)
}

fn verify(url: Option<String>, config: &CacheConfig) -> Result<u8, u8> {
    let remote = remote(url, config)?;
    let trusted = trusted(config)?;
    let scratch = std::env::temp_dir().join(format!("mustbuild-verify-{}", std::process::id()));
    let local = LocalStore::open(&scratch).map_err(|e| {
        tell!(
            "error: cannot make a scratch store at {}: {e}",
            scratch.display()
        );
        exit::ENVIRONMENT
    })?;
    let keys: Vec<Digest> = remote.keys().map_err(|e| {
        tell!("error: {e}");
        exit::ENVIRONMENT
    })?;
    let t = take(&remote, &local, &keys, &trusted);
    drop(local);
    let _ = std::fs::remove_dir_all(&scratch);
    outln!(
        "{} realisations: {} intact and trusted, {} not trusted, {} damaged",
        keys.len(),
        t.ok,
        t.refused,
        t.bad
    );
    Ok(t.exit())
}

fn pull(
    url: Option<String>,
    prefixes: &[String],
    store: Option<PathBuf>,
    config: &CacheConfig,
) -> Result<u8, u8> {
    let remote = remote(url, config)?;
    let trusted = trusted(config)?;
    if trusted.is_empty() {
        tell!("error: no trusted-keys in the configuration: nothing in a cache can be taken");
        return Err(exit::USAGE);
    }
    let root = store.unwrap_or_else(LocalStore::default_location);
    let local = LocalStore::open(&root).map_err(|e| {
        tell!("error: cannot open the store at {}: {e}", root.display());
        exit::ENVIRONMENT
    })?;
    let mut keys: Vec<Digest> = remote.keys().map_err(|e| {
        tell!("error: {e}");
        exit::ENVIRONMENT
    })?;
    if !prefixes.is_empty() {
        let prefixes: Vec<String> = prefixes.iter().map(|p| p.to_ascii_lowercase()).collect();
        keys.retain(|k| {
            let hex = k.to_hex();
            prefixes.iter().any(|p| hex.starts_with(p.as_str()))
        });
    }
    // What the store has already is not fetched again.
    let mut wanted = Vec::with_capacity(keys.len());
    for k in keys {
        let have = local.realisation(&k).map_err(|e| {
            tell!("error: {e}");
            exit::ENVIRONMENT
        })?;
        if have.is_none() {
            wanted.push(k);
        }
    }
    let t = take(&remote, &local, &wanted, &trusted);
    outln!(
        "{} realisations to take: {} taken, {} not trusted, {} damaged (into {})",
        wanted.len(),
        t.ok,
        t.refused,
        t.bad,
        root.display()
    );
    Ok(t.exit())
}

/// How many realisations were taken, refused and damaged.
struct Taken {
    ok: usize,
    refused: usize,
    bad: usize,
}

impl Taken {
    /// Anything refused or damaged is a failure of the command.
    fn exit(&self) -> u8 {
        if self.bad > 0 || self.refused > 0 {
            exit::INVALID
        } else {
            exit::OK
        }
    }
}

/// Takes `keys` from `remote` into `local` (outside any run), saying what was
/// not taken and why.
fn take(remote: &Remote, local: &LocalStore, keys: &[Digest], trusted: &[PublicKey]) -> Taken {
    let mut t = Taken {
        ok: 0,
        refused: 0,
        bad: 0,
    };
    for (key, pulled) in keys
        .iter()
        .zip(remote.pull_many(local, keys, trusted, None))
    {
        match pulled {
            Ok(Pulled::Taken { .. }) => t.ok += 1,
            Ok(Pulled::Absent) => {}
            Ok(Pulled::Refused(v)) => {
                t.refused += 1;
                outln!("{}  not taken: {v}", key.short());
            }
            Err(e) => {
                t.bad += 1;
                outln!("{}  {e}", key.short());
            }
        }
    }
    t
}
