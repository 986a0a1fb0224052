//! Parameters from the kernel command line, put there by the iPXE script.

#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    /// Base URL of the appliance, e.g. `http://10.77.0.1:8081`.
    pub api: String,
    /// The credential for this boot.
    pub token: String,
    /// The MAC the machine booted from (`slipway.mac=`, dashed).
    pub mac: inventory::MacAddr,
    /// The appliance's public key (`slipway.key=`, hex): every instruction
    /// must be signed with it. Absent from an older appliance's scripts.
    pub key: Option<String>,
}

pub fn parse(cmdline: &str) -> Result<Args, String> {
    let get = |key: &str| {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
            .ok_or_else(|| format!("{key} missing from the kernel command line"))
    };
    let mac = get("slipway.mac")?.parse().map_err(|e| format!("slipway.mac: {e}"))?;
    Ok(Args { api: get("slipway.api")?, token: get("slipway.token")?, mac, key: get("slipway.key").ok() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_ipxe_script_writes() {
        let line = "initrd=initrd.img console=ttyS0,115200 quiet slipway.api=http://10.77.0.1:8081 slipway.token=abc slipway.key=00ff slipway.mac=52-54-00-ab-cd-01\n";
        assert_eq!(
            parse(line),
            Ok(Args {
                api: "http://10.77.0.1:8081".into(),
                token: "abc".into(),
                mac: "52:54:00:ab:cd:01".parse().unwrap(),
                key: Some("00ff".into()),
            })
        );
        assert_eq!(parse("quiet"), Err("slipway.mac missing from the kernel command line".into()));
    }
}
