//! Where the CLI finds the API: `--api`/`--token`/`--ca`/`--insecure`,
//! then `SLIPWAY_API_URL`/`SLIPWAY_API_TOKEN`/`SLIPWAY_API_CA` (clap reads
//! both), then the config file (`$SLIPWAY_CLI_CONFIG`, else
//! `$XDG_CONFIG_HOME/slipway/cli.toml`, else `~/.config/slipway/cli.toml`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::CliError;

/// The API `slipway serve` listens on by default.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// `cli.toml`.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub url: Option<String>,
    pub token: Option<String>,
    /// PEM CA (or the server's own certificate); relative to the file.
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub insecure: bool,
}

/// What flags and the environment gave.
#[derive(Debug, Default, Clone)]
pub struct Given {
    pub url: Option<String>,
    pub token: Option<String>,
    pub ca: Option<PathBuf>,
    pub insecure: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub url: String,
    pub token: Option<String>,
    pub ca: Option<PathBuf>,
    pub insecure: bool,
}

pub fn config_path(var: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |name: &str| var(name).filter(|v| !v.is_empty());
    if let Some(path) = set("SLIPWAY_CLI_CONFIG") {
        return Some(path.into());
    }
    let base =
        set("XDG_CONFIG_HOME").map(PathBuf::from).or_else(|| set("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(base.join("slipway").join("cli.toml"))
}

/// Reads the config file; a missing file is no settings.
pub fn load_file(path: &Path) -> Result<Option<FileSettings>, CliError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CliError::File { what: "reading", path: path.into(), source }),
    };
    let mut file: FileSettings =
        toml::from_str(&text).map_err(|e| CliError::Usage(format!("{}: {}", path.display(), e.message())))?;
    if let (Some(ca), Some(dir)) = (&file.ca, path.parent()) {
        file.ca = Some(dir.join(ca));
    }
    if file.token.is_some() {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            eprintln!("warning: {} holds a token and others can read it (chmod 600 it)", path.display());
        }
    }
    Ok(Some(file))
}

/// Flags and environment first, then the file, then the default URL.
pub fn resolve(given: Given, file: Option<FileSettings>) -> Settings {
    let file = file.unwrap_or_default();
    Settings {
        url: given.url.or(file.url).unwrap_or_else(|| DEFAULT_URL.into()).trim_end_matches('/').to_string(),
        token: given.token.or(file.token).filter(|t| !t.is_empty()),
        ca: given.ca.or(file.ca),
        insecure: given.insecure || file.insecure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_environment_win_over_the_file() {
        let file = FileSettings {
            url: Some("https://slipway.rack7:8443/".into()),
            token: Some("from-file".into()),
            ca: Some("/etc/ca.pem".into()),
            insecure: false,
        };
        let s = resolve(Given { token: Some("from-env".into()), ..Given::default() }, Some(file.clone()));
        assert_eq!(
            s,
            Settings {
                url: "https://slipway.rack7:8443".into(),
                token: Some("from-env".into()),
                ca: Some("/etc/ca.pem".into()),
                insecure: false
            }
        );
        let s = resolve(Given { url: Some("http://127.0.0.1:9000".into()), ..Given::default() }, Some(file));
        assert_eq!((s.url.as_str(), s.token.as_deref()), ("http://127.0.0.1:9000", Some("from-file")));
        let s = resolve(Given::default(), None);
        assert_eq!((s.url.as_str(), s.token), (DEFAULT_URL, None));
    }

    #[test]
    fn the_file_is_found_and_read() {
        let var = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
        };
        assert_eq!(config_path(var(&[("HOME", "/home/op")])), Some("/home/op/.config/slipway/cli.toml".into()));
        assert_eq!(
            config_path(var(&[("HOME", "/home/op"), ("XDG_CONFIG_HOME", "/x")])),
            Some("/x/slipway/cli.toml".into())
        );
        assert_eq!(config_path(var(&[("SLIPWAY_CLI_CONFIG", "/c.toml"), ("HOME", "/h")])), Some("/c.toml".into()));
        assert_eq!(config_path(var(&[])), None);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cli.toml");
        assert_eq!(load_file(&path).unwrap(), None, "no file, no settings");
        std::fs::write(&path, "url = \"https://a:8443\"\nca = \"ca.pem\"\n").unwrap();
        let file = load_file(&path).unwrap().unwrap();
        assert_eq!(file.ca, Some(dir.path().join("ca.pem")), "relative to the file");
        std::fs::write(&path, "urll = \"x\"\n").unwrap();
        assert!(load_file(&path).unwrap_err().to_string().contains("urll"));
    }
}
