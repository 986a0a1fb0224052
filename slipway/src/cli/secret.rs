//! Passwords for BMCs and UPSes: from a file, an environment variable or
//! a prompt on the terminal, never from the command line (any user can
//! read another's argv in `ps`). Never printed.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;

use super::CliError;

#[derive(Args, Debug, Clone, Default)]
pub struct PasswordArgs {
    /// Read the password from this file (its first line).
    #[arg(long, value_name = "FILE", conflicts_with = "password_env")]
    pub password_file: Option<PathBuf>,
    /// Read the password from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub password_env: Option<String>,
}

impl PasswordArgs {
    /// The password from the file or variable; else asked for on the
    /// terminal when there is one (`prompt`), else `None`.
    pub fn read(&self, prompt: Option<&str>) -> Result<Option<String>, CliError> {
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|source| CliError::File {
                what: "reading the password from",
                path: path.clone(),
                source,
            })?;
            return Ok(Some(text.lines().next().unwrap_or_default().to_string()));
        }
        if let Some(var) = &self.password_env {
            return match std::env::var(var) {
                Ok(value) => Ok(Some(value)),
                Err(_) => Err(CliError::Usage(format!("--password-env {var}: the variable is not set"))),
            };
        }
        match prompt {
            Some(prompt) if std::io::stdin().is_terminal() => {
                rpassword::prompt_password(prompt).map(Some).map_err(|source| CliError::File {
                    what: "reading the password from",
                    path: "/dev/tty".into(),
                    source,
                })
            }
            _ => Ok(None),
        }
    }

    /// Like [`read`](Self::read), but a password is required.
    pub fn require(&self, prompt: &str) -> Result<String, CliError> {
        self.read(Some(prompt))?.ok_or_else(|| {
            CliError::Usage(
                "a password is needed: give --password-file FILE or --password-env VAR (no terminal to ask on)".into(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_come_from_files_and_variables() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let args = PasswordArgs { password_file: Some(file), password_env: None };
        assert_eq!(args.require("unused").unwrap(), "s3cret", "the first line, without its newline");
        let args = PasswordArgs { password_file: None, password_env: Some("SLIPWAY_TEST_SURELY_UNSET".into()) };
        assert!(args.read(None).unwrap_err().to_string().contains("SLIPWAY_TEST_SURELY_UNSET"));
        let args = PasswordArgs { password_file: None, password_env: Some("PATH".into()) };
        assert!(args.read(None).unwrap().is_some());
        assert_eq!(PasswordArgs::default().read(None).unwrap(), None, "no prompt asked for, none given");
    }
}
