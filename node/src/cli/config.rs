//! The client configuration file: where the CLI's client verbs find a cluster when neither
//! a flag nor an environment variable names one.
//!
//! `dynamo dev` writes it when its cluster is up, so `dynamo get greeting` works with no
//! flags after the README's quick start. Precedence for each setting, highest first:
//! the flag (`--endpoint`, `--token`), the environment (`DYNAMO_ENDPOINT`, `DYNAMO_TOKEN`),
//! this file, the built-in default (`127.0.0.1:8080`, no token). The file's token is used
//! only with the file's endpoint: a token meant for the dev cluster is never sent to an
//! endpoint named elsewhere.
//!
//! The file is `$DYNAMO_CLIENT_CONFIG`, else `$XDG_CONFIG_HOME/dynamo/client.json`, else
//! `$HOME/.config/dynamo/client.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:8080";

#[derive(Debug, Error)]
pub enum ClientConfigError {
    #[error("reading the client config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the client config {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("writing the client config {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no place for the client config: set DYNAMO_CLIENT_CONFIG, XDG_CONFIG_HOME or HOME")]
    NoLocation,
}

/// The file's contents (JSON, snake_case keys; every field optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientConfig {
    /// A member's HTTP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Bearer token sent to `endpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Data directory of the `dynamo dev` cluster that wrote the file (`dynamo dev kill`
    /// and the other member commands find the running cluster through it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_data_dir: Option<PathBuf>,
}

/// Where the client config lives, from the environment.
pub fn default_path() -> Option<PathBuf> {
    path_from(|name| std::env::var_os(name))
}

fn path_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    let set = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(explicit) = set("DYNAMO_CLIENT_CONFIG") {
        return Some(explicit);
    }
    let config_home = set("XDG_CONFIG_HOME").or_else(|| set("HOME").map(|h| h.join(".config")))?;
    Some(config_home.join("dynamo").join("client.json"))
}

impl ClientConfig {
    /// The file at `path`; an absent file is an empty configuration.
    pub fn load(path: &Path) -> Result<ClientConfig, ClientConfigError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| ClientConfigError::Parse {
                    path: path.to_path_buf(),
                    source,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClientConfig::default()),
            Err(source) => Err(ClientConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes the file (creating its directory), readable by its owner only: it holds a
    /// token.
    pub fn save(&self, path: &Path) -> Result<(), ClientConfigError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let fail = |source| ClientConfigError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let body = serde_json::to_vec_pretty(self).map_err(|e| fail(std::io::Error::other(e)))?;
        // Written beside and renamed over the old file, so a reader never sees half of it.
        let tmp = path.with_extension("json.tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(fail)?;
        file.write_all(&body).map_err(fail)?;
        file.write_all(b"\n").map_err(fail)?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(fail)
    }
}

/// The endpoint and token a client verb uses: see the module documentation for the order.
/// `given_*` are the flag's or the environment variable's values (clap merges the two).
pub fn resolve(
    given_endpoint: Option<&str>,
    given_token: Option<&str>,
    file: &ClientConfig,
) -> (String, Option<String>) {
    let from_file = given_endpoint.is_none() && file.endpoint.is_some();
    let endpoint = given_endpoint
        .map(str::to_string)
        .or_else(|| file.endpoint.clone())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    let token = given_token
        .map(str::to_string)
        .or_else(|| file.token.clone().filter(|_| from_file));
    (endpoint, token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_or_environment_wins_over_the_file_and_the_file_over_the_default() {
        let file = ClientConfig {
            endpoint: Some("http://127.0.0.1:7000".into()),
            token: Some("dev-token".into()),
            dev_data_dir: None,
        };
        assert_eq!(
            resolve(None, None, &file),
            ("http://127.0.0.1:7000".into(), Some("dev-token".into()))
        );
        assert_eq!(
            resolve(None, Some("mine"), &file),
            ("http://127.0.0.1:7000".into(), Some("mine".into()))
        );
        // Another endpoint never gets the dev cluster's token.
        assert_eq!(
            resolve(Some("prod:80"), None, &file),
            ("prod:80".into(), None)
        );
        assert_eq!(
            resolve(None, None, &ClientConfig::default()),
            (DEFAULT_ENDPOINT.into(), None)
        );
    }

    #[test]
    fn the_file_is_found_through_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        assert_eq!(
            path_from(env(&[
                ("DYNAMO_CLIENT_CONFIG", "/x/c.json"),
                ("HOME", "/h")
            ])),
            Some(PathBuf::from("/x/c.json"))
        );
        assert_eq!(
            path_from(env(&[("XDG_CONFIG_HOME", "/cfg"), ("HOME", "/h")])),
            Some(PathBuf::from("/cfg/dynamo/client.json"))
        );
        assert_eq!(
            path_from(env(&[("XDG_CONFIG_HOME", ""), ("HOME", "/h")])),
            Some(PathBuf::from("/h/.config/dynamo/client.json"))
        );
        assert_eq!(path_from(env(&[])), None);
    }

    #[test]
    fn a_saved_file_loads_back_and_an_absent_one_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/client.json");
        assert_eq!(ClientConfig::load(&path).unwrap(), ClientConfig::default());
        let written = ClientConfig {
            endpoint: Some("http://127.0.0.1:7000".into()),
            token: Some("t".into()),
            dev_data_dir: Some(PathBuf::from("/data")),
        };
        written.save(&path).unwrap();
        assert_eq!(ClientConfig::load(&path).unwrap(), written);
        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(
            ClientConfig::load(&path),
            Err(ClientConfigError::Parse { .. })
        ));
    }
}
