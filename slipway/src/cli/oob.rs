//! `slipway bmcs` and `slipway ups`: enrolling out-of-band devices (their
//! passwords read by `secret`, never from argv) and reading them back.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

use super::client::seg;
use super::commands::read_file;
use super::secret::PasswordArgs;
use super::{connect, print, views, ApiArgs, CliError};

#[derive(Subcommand, Debug, Clone)]
pub enum BmcsCmd {
    /// All of them (the default).
    List,
    Show {
        id: String,
    },
    /// Enrol a BMC; its inventory is read at once and it is linked to its machine.
    Enrol(Box<BmcEnrol>),
    Remove {
        id: String,
    },
    /// Read the BMC's inventory again now.
    Inventory {
        id: String,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum UpsCmd {
    /// All of them (the default).
    List,
    Show {
        name: String,
    },
    /// Enrol a UPS: NUT upsd, SNMP UPS-MIB or Redfish.
    Enrol(Box<UpsEnrol>),
    Remove {
        name: String,
    },
}

#[derive(Args, Debug, Clone)]
pub struct BmcEnrol {
    /// `https://10.0.1.21`, `10.0.1.21` or `10.0.1.21:623`.
    #[arg(long)]
    address: String,
    #[arg(long)]
    username: String,
    #[command(flatten)]
    password: PasswordArgs,
    #[arg(long, value_enum, default_value_t = BmcProtocol::Auto)]
    protocol: BmcProtocol,
    /// Accept the BMC's certificate unchecked (factory self-signed).
    #[arg(long, conflicts_with = "tls_ca")]
    tls_no_verify: bool,
    /// Trust only this PEM CA for the BMC.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    #[arg(long)]
    rack: Option<String>,
    /// PXE-boot the machine into discovery once it is linked.
    #[arg(long)]
    commission: bool,
}

#[derive(Args, Debug, Clone)]
pub struct UpsEnrol {
    name: String,
    #[arg(long, value_enum)]
    protocol: UpsProtocol,
    /// `host:port` (NUT 3493, SNMP 161) or a Redfish URL.
    #[arg(long)]
    address: String,
    /// NUT: the UPS's name on that upsd.
    #[arg(long)]
    ups: Option<String>,
    /// Redfish: the battery or power equipment (default: the first).
    #[arg(long)]
    resource: Option<String>,
    /// With a username the password is read like a BMC's.
    #[arg(long)]
    username: Option<String>,
    #[command(flatten)]
    password: PasswordArgs,
    /// SNMP v2c community, read from this file [default: public].
    #[arg(long, value_name = "FILE")]
    community_file: Option<PathBuf>,
    #[arg(long, conflicts_with = "tls_ca")]
    tls_no_verify: bool,
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Racks it feeds (repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    racks: Vec<String>,
    /// Machines it feeds, by id.
    #[arg(long, value_delimiter = ',')]
    machines: Vec<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BmcProtocol {
    Auto,
    Redfish,
    Ipmi,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum UpsProtocol {
    Nut,
    Snmp,
    Redfish,
}

/// What a `--tls-no-verify`/`--tls-ca` pair adds to an enrolment.
fn tls_fields(body: &mut Value, no_verify: bool, ca: &Option<PathBuf>) -> Result<(), CliError> {
    if no_verify {
        body["tls_verify"] = json!(false);
    }
    if let Some(path) = ca {
        body["ca_pem"] = json!(read_file("reading the CA", path)?);
    }
    Ok(())
}

pub fn bmcs(api: &ApiArgs, cmd: BmcsCmd) -> Result<(), CliError> {
    let client = connect(api)?;
    match cmd {
        BmcsCmd::List => print(api, &client.get("/api/v1/bmcs")?, views::bmcs),
        BmcsCmd::Show { id } => print(api, &client.get(&format!("/api/v1/bmcs/{}", seg(&id)))?, views::bmc),
        BmcsCmd::Inventory { id } => {
            print(api, &client.post(&format!("/api/v1/bmcs/{}/inventory", seg(&id)), &json!({}))?, views::bmc)
        }
        BmcsCmd::Remove { id } => {
            client.delete(&format!("/api/v1/bmcs/{}", seg(&id)))?;
            eprintln!("BMC {id} removed");
        }
        BmcsCmd::Enrol(enrol) => {
            let BmcEnrol { address, username, password, protocol, tls_no_verify, tls_ca, rack, commission } = *enrol;
            let secret = password.require(&format!("Password for {username} on {address}: "))?;
            let protocol = format!("{protocol:?}").to_lowercase();
            let mut body = json!({ "address": address, "protocol": protocol, "username": username,
                                   "password": secret, "commission": commission });
            if let Some(rack) = rack {
                body["rack"] = json!(rack);
            }
            tls_fields(&mut body, tls_no_verify, &tls_ca)?;
            print(api, &client.post("/api/v1/bmcs", &body)?, views::bmc);
        }
    }
    Ok(())
}

pub fn ups(api: &ApiArgs, cmd: UpsCmd) -> Result<(), CliError> {
    let client = connect(api)?;
    match cmd {
        UpsCmd::List => print(api, &client.get("/api/v1/ups")?, views::ups_list),
        UpsCmd::Show { name } => print(api, &client.get(&format!("/api/v1/ups/{}", seg(&name)))?, views::ups),
        UpsCmd::Remove { name } => {
            client.delete(&format!("/api/v1/ups/{}", seg(&name)))?;
            eprintln!("UPS {name} removed");
        }
        UpsCmd::Enrol(enrol) => {
            let UpsEnrol {
                name,
                protocol,
                address,
                ups,
                resource,
                username,
                password,
                community_file,
                tls_no_verify,
                tls_ca,
                racks,
                machines,
            } = *enrol;
            let protocol = format!("{protocol:?}").to_lowercase();
            let mut body = json!({ "name": name, "protocol": protocol, "address": address,
                                   "feeds": { "racks": racks, "machines": machines } });
            for (key, value) in [("ups", ups), ("resource", resource)] {
                if let Some(v) = value {
                    body[key] = json!(v);
                }
            }
            if let Some(user) = username {
                body["password"] = json!(password.require(&format!("Password for {user} on {address}: "))?);
                body["username"] = json!(user);
            } else if password.password_file.is_some() || password.password_env.is_some() {
                return Err(CliError::Usage("a password needs --username".into()));
            }
            if let Some(path) = &community_file {
                body["community"] = json!(read_file("reading the community from", path)?.trim());
            }
            tls_fields(&mut body, tls_no_verify, &tls_ca)?;
            print(api, &client.post("/api/v1/ups", &body)?, views::ups);
        }
    }
    Ok(())
}
