//! The operator CLI: `slipway machines|bmcs|ups|images|deploy|release|
//! power|events|tokens|campaigns|firmware`, a client of the REST API
//! (blocking `ureq`).
//!
//! It owns argument parsing for those commands, finding the API
//! (`settings`), talking to it (`client`), and printing (`views` over the
//! pure `table`; `-o json` prints the API's JSON as it came). It holds no
//! logic the API does not: every check and decision is the server's, and
//! its problem documents are printed as `error: <title>: <detail> (field: X)`.

mod campaigns;
mod client;
mod commands;
mod images;
mod oob;
mod secret;
mod settings;
mod table;
mod views;

use std::path::PathBuf;

use clap::{Args, ValueEnum};

pub use commands::Command;

#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// The API's URL [default: from the config file, else http://127.0.0.1:8080].
    #[arg(long = "api", value_name = "URL", global = true, env = "SLIPWAY_API_URL")]
    pub url: Option<String>,
    /// Bearer token (prefer SLIPWAY_API_TOKEN or the config file: argv is visible in ps).
    #[arg(long, value_name = "TOKEN", global = true, env = "SLIPWAY_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trust only this PEM CA or certificate for an https:// API (e.g. the
    /// appliance's data_dir/api-tls-cert.pem).
    #[arg(long, value_name = "FILE", global = true, env = "SLIPWAY_API_CA")]
    pub ca: Option<PathBuf>,
    /// Do not check the API's TLS certificate.
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Output: aligned tables for people, or the API's JSON for scripts.
    #[arg(short = 'o', long = "output", value_enum, global = true, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The API refused: its problem document.
    #[error("{title}: {detail}{}", field.as_ref().map(|f| format!(" (field: {f})")).unwrap_or_default())]
    Problem { status: u16, title: String, detail: String, field: Option<String> },
    #[error("cannot reach the Slipway API at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("{0}")]
    Usage(String),
    #[error("{what} {path}")]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs one operator command; the process exit code (errors are printed
/// here, with their causes).
pub fn run(command: Command) -> i32 {
    match commands::run(command) {
        Ok(()) => 0,
        Err(err) => {
            let mut text = format!("error: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("{text}");
            1
        }
    }
}

/// The client for `api`, settings resolved.
fn connect(api: &ApiArgs) -> Result<client::Client, CliError> {
    let given =
        settings::Given { url: api.url.clone(), token: api.token.clone(), ca: api.ca.clone(), insecure: api.insecure };
    let file = match settings::config_path(|name| std::env::var(name).ok()) {
        Some(path) => settings::load_file(&path)?,
        None => None,
    };
    client::Client::new(&settings::resolve(given, file))
}

/// Prints `value` as JSON, or `human(value)` as text.
fn print(api: &ApiArgs, value: &serde_json::Value, human: impl FnOnce(&serde_json::Value) -> String) {
    match api.output {
        Output::Json if value.is_null() => {}
        Output::Json => println!("{}", serde_json::to_string_pretty(value).unwrap_or_default()),
        Output::Table => print!("{}", human(value)),
    }
}
