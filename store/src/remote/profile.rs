//! Credentials from the AWS shared files, as the AWS tools read them, when
//! the environment gives none: `$AWS_SHARED_CREDENTIALS_FILE` (default
//! `~/.aws/credentials`) and `$AWS_CONFIG_FILE` (default `~/.aws/config`, for
//! the region), section `$AWS_PROFILE` (default `default`; in the config file
//! `[profile NAME]`). Never printed or logged.

use std::path::PathBuf;

pub(super) struct Profile {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub region: Option<String>,
}

pub(super) fn from_files() -> Option<Profile> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let file = |var: &str, default: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
    };
    let name = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".to_string());
    let credentials =
        std::fs::read_to_string(file("AWS_SHARED_CREDENTIALS_FILE", "credentials")?).ok()?;
    let config = file("AWS_CONFIG_FILE", "config")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    parse(&credentials, &config, &name)
}

/// The profile `name` of a credentials file (and the region from the config file).
fn parse(credentials: &str, config: &str, name: &str) -> Option<Profile> {
    let key = |text: &str, section: &str, key: &str| section_value(text, section, key);
    let config_section = if name == "default" {
        "default".to_string()
    } else {
        format!("profile {name}")
    };
    Some(Profile {
        access_key_id: key(credentials, name, "aws_access_key_id")?,
        secret_access_key: key(credentials, name, "aws_secret_access_key")?,
        session_token: key(credentials, name, "aws_session_token"),
        region: key(config, &config_section, "region").or_else(|| key(credentials, name, "region")),
    })
}

/// `key = value` in `[section]` of an INI text.
fn section_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if inside
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            return Some(v.trim().to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn a_named_profile_and_its_region_are_read() {
        let credentials = "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\n\
                           # the lab's\n[lab]\naws_access_key_id=L\naws_secret_access_key= LS \n";
        let config = "[default]\nregion = eu-west-3\n[profile lab]\nregion = us-east-1\n";
        let lab = parse(credentials, config, "lab").unwrap();
        assert_eq!(
            (
                lab.access_key_id.as_str(),
                lab.secret_access_key.as_str(),
                lab.region.as_deref()
            ),
            ("L", "LS", Some("us-east-1"))
        );
        let default = parse(credentials, config, "default").unwrap();
        assert_eq!(
            (default.access_key_id.as_str(), default.region.as_deref()),
            ("D", Some("eu-west-3"))
        );
        assert!(parse(credentials, config, "missing").is_none());
        assert!(parse("[x]\naws_access_key_id = A\n", "", "x").is_none());
    }
}
