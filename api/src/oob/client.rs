//! One BMC client over the protocols we speak, and the UPS reader, so the
//! manager above them does not care which is which. Also finds a BMC's
//! protocol when enrolment says `auto`.

use std::time::Duration;

use inventory::ipmi::IpmiClient;
use inventory::oob::{
    BmcInventory, BmcProtocol, BootTarget, Credentials, OobError, PowerAction, PowerState, TlsTrust, UpsProtocol,
    UpsState,
};
use inventory::redfish::{RedfishClient, TaskInfo};
use inventory::ups::nut::NutClient;
use inventory::ups::snmp::SnmpUps;

pub enum BmcClient {
    Redfish(RedfishClient),
    Ipmi(IpmiClient),
}

/// One request to a BMC.
#[derive(Debug, Clone)]
pub enum Op {
    Inventory,
    PowerState,
    Power(PowerAction),
    /// `None`: keep the machine's boot mode (Redfish) / legacy (IPMI).
    Boot(BootTarget, Option<bool>),
    /// Fetch and apply a firmware image (Redfish SimpleUpdate) on the
    /// targets (resource URIs; empty: the image says).
    SimpleUpdate {
        image_uri: String,
        targets: Vec<String>,
    },
    /// Read a task a SimpleUpdate returned.
    Task(String),
}

#[derive(Debug)]
pub enum OpOutput {
    Inventory(Box<BmcInventory>),
    Power(PowerState),
    /// The task to poll, when the BMC gave one.
    Task(Option<String>),
    TaskState(TaskInfo),
    Done,
}

/// `https://host` stays a URL; a bare `host` becomes `https://host`.
pub fn redfish_url(address: &str) -> String {
    if address.starts_with("http://") || address.starts_with("https://") {
        address.trim_end_matches('/').to_string()
    } else {
        format!("https://{address}")
    }
}

/// `host[:port]`, port 623 by default.
pub fn ipmi_host_port(address: &str) -> Result<(String, u16), String> {
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.starts_with('[') => {
            let port = port.parse().map_err(|_| format!("{port:?} is not a port"))?;
            Ok((host.trim_matches(['[', ']']).to_string(), port))
        }
        _ => Ok((address.to_string(), 623)),
    }
}

impl BmcClient {
    pub fn connect(
        protocol: BmcProtocol,
        address: &str,
        creds: Credentials,
        tls: TlsTrust,
        timeout: Duration,
    ) -> Result<BmcClient, OobError> {
        match protocol {
            BmcProtocol::Redfish => {
                Ok(BmcClient::Redfish(RedfishClient::new(&redfish_url(address), creds, tls, timeout)?))
            }
            BmcProtocol::Ipmi => {
                let (host, port) = ipmi_host_port(address)
                    .map_err(|detail| OobError::Protocol { peer: address.to_string(), detail })?;
                Ok(BmcClient::Ipmi(IpmiClient::new(host, port, creds, timeout)))
            }
        }
    }

    /// Redfish first (it says more), then IPMI. A service that answers but
    /// refuses the login is that protocol, with a wrong password.
    pub async fn detect(
        address: &str,
        creds: &Credentials,
        tls: &TlsTrust,
        timeout: Duration,
    ) -> Result<BmcProtocol, OobError> {
        let mut why = vec![];
        if let Ok(client) = RedfishClient::new(&redfish_url(address), creds.clone(), tls.clone(), timeout) {
            match client.power_state().await {
                Ok(_) | Err(OobError::Auth { .. }) => return Ok(BmcProtocol::Redfish),
                Err(err) => why.push(format!("Redfish: {err}")),
            }
        }
        if let Ok((host, port)) = ipmi_host_port(address) {
            match IpmiClient::new(host, port, creds.clone(), timeout).power_state().await {
                Ok(_) | Err(OobError::Auth { .. }) => return Ok(BmcProtocol::Ipmi),
                Err(err) => why.push(format!("IPMI: {err}")),
            }
        }
        Err(OobError::Protocol {
            peer: address.to_string(),
            detail: format!("neither Redfish nor IPMI answered ({})", why.join("; ")),
        })
    }

    pub async fn run(&self, op: Op) -> Result<OpOutput, OobError> {
        match (self, op) {
            (BmcClient::Redfish(c), Op::Inventory) => Ok(OpOutput::Inventory(Box::new(c.inventory().await?))),
            (BmcClient::Ipmi(c), Op::Inventory) => Ok(OpOutput::Inventory(Box::new(c.inventory().await?))),
            (BmcClient::Redfish(c), Op::PowerState) => Ok(OpOutput::Power(c.power_state().await?)),
            (BmcClient::Ipmi(c), Op::PowerState) => Ok(OpOutput::Power(c.power_state().await?)),
            (BmcClient::Redfish(c), Op::Power(a)) => c.power(a).await.map(|_| OpOutput::Done),
            (BmcClient::Ipmi(c), Op::Power(a)) => c.power(a).await.map(|_| OpOutput::Done),
            (BmcClient::Redfish(c), Op::Boot(t, Some(uefi))) => c.set_boot_once(t, uefi).await.map(|_| OpOutput::Done),
            (BmcClient::Redfish(c), Op::Boot(t, None)) => c.set_boot_once_keep_mode(t).await.map(|_| OpOutput::Done),
            (BmcClient::Ipmi(c), Op::Boot(t, uefi)) => {
                c.set_boot_once(t, uefi.unwrap_or(false)).await.map(|_| OpOutput::Done)
            }
            (BmcClient::Redfish(c), Op::SimpleUpdate { image_uri, targets }) => {
                Ok(OpOutput::Task(c.simple_update(&image_uri, &targets).await?))
            }
            (BmcClient::Redfish(c), Op::Task(uri)) => Ok(OpOutput::TaskState(c.task_state(&uri).await?)),
            (BmcClient::Ipmi(c), Op::SimpleUpdate { .. } | Op::Task(_)) => {
                Err(OobError::Unsupported { peer: c.peer(), what: "firmware updates over IPMI".into() })
            }
        }
    }
}

/// Reads one UPS's state over its protocol.
pub async fn read_ups(
    protocol: UpsProtocol,
    address: &str,
    target: &str,
    creds: Option<Credentials>,
    tls: &TlsTrust,
    timeout: Duration,
) -> Result<UpsState, OobError> {
    match protocol {
        UpsProtocol::Nut => NutClient::new(address.to_string(), target.to_string(), creds, timeout).state().await,
        UpsProtocol::Snmp => SnmpUps::new(address.to_string(), target.to_string(), timeout).state().await,
        UpsProtocol::Redfish => {
            let creds = creds.ok_or_else(|| OobError::Auth { peer: address.to_string() })?;
            let client = RedfishClient::new(&redfish_url(address), creds, tls.clone(), timeout)?;
            let all = client.power_equipment_ups().await?;
            let wanted = all.iter().find(|(name, _)| target.is_empty() || name == target);
            wanted.map(|(_, state)| state.clone()).ok_or_else(|| OobError::Unsupported {
                peer: address.to_string(),
                what: format!(
                    "a battery or power equipment named {target:?} (it has: {})",
                    all.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                ),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(redfish_url("10.0.0.5"), "https://10.0.0.5");
        assert_eq!(redfish_url("http://127.0.0.1:8000/"), "http://127.0.0.1:8000");
        assert_eq!(ipmi_host_port("10.0.0.5"), Ok(("10.0.0.5".into(), 623)));
        assert_eq!(ipmi_host_port("10.0.0.5:6230"), Ok(("10.0.0.5".into(), 6230)));
        assert!(ipmi_host_port("10.0.0.5:x").is_err());
    }
}
