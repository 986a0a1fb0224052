//! The `slipway` binary: `serve` (the appliance in one process), `ramdisk`
//! (build the discovery ramdisk) and the operator CLI (`machines`,
//! `images`, `deploy`, ...: see `cli`). `lab` and `bench` are handed to the
//! `slipway-lab` binary beside it (the `hardware-tests` crate), so this
//! one links no simulator and no lab code.

mod cli;

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "slipway", version, about = "Bare-metal provisioning appliance")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the appliance: API, and DHCP/TFTP/boot HTTP when a provisioning
    /// interface is configured.
    Serve {
        /// TOML configuration (see slipway.example.toml). Without one,
        /// embedded defaults and SLIPWAY_* environment variables apply.
        #[arg(long, env = "SLIPWAY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// The QEMU lab: VMs that network-boot from a Slipway in a private
    /// network namespace (run by the `slipway-lab` binary).
    #[command(disable_help_flag = true)]
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Benchmarks against real peers, side by side (a report, not a test;
    /// run by the `slipway-lab` binary).
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Build (or find cached) the discovery ramdisk and print its manifest.
    Ramdisk {
        #[arg(long, default_value = "/var/cache/slipway")]
        cache_dir: PathBuf,
    },
    #[command(flatten)]
    Operator(Box<cli::Command>),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Serve { config } => {
            let config = api::config::Config::load(config.as_deref(), std::env::vars())?;
            init_tracing(config.log_format);
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(api::serve::run(config))
        }
        Cmd::Lab { args } => run_lab_binary("lab", args),
        Cmd::Bench { args } => run_lab_binary("bench", args),
        Cmd::Operator(command) => std::process::exit(cli::run(*command)),
        Cmd::Ramdisk { cache_dir } => {
            init_tracing(api::config::LogFormat::Text);
            let agent = std::env::current_exe()?.with_file_name("slipway-agent");
            let ramdisk = images::ensure_ramdisk(&images::RamdiskInputs { agent_binary: agent, cache_dir })?;
            println!("{}", serde_json::to_string_pretty(&ramdisk)?);
            Ok(())
        }
    }
}

/// Hands `slipway lab ...` and `slipway bench ...` to `slipway-lab`,
/// installed beside this binary: the lab, its simulated BMCs and UPS and
/// the benchmarks live there, so the appliance links none of them. `exec`
/// keeps the process id, so whoever started `slipway lab vbmc` ends it by
/// that id as before.
fn run_lab_binary(command: &str, args: Vec<OsString>) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let lab = std::env::current_exe()?.with_file_name("slipway-lab");
    if !lab.exists() {
        anyhow::bail!(
            "`slipway {command}` needs the slipway-lab binary beside {} (cargo build --release -p hardware-tests)",
            lab.display()
        );
    }
    let err = std::process::Command::new(&lab).arg(command).args(args).exec();
    Err(anyhow::Error::new(err).context(format!("running {}", lab.display())))
}

fn init_tracing(format: api::config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == api::config::LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}
