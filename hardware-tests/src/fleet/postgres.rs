//! The fleet's shared database: a PostgreSQL server in the racks'
//! namespace, reached by every appliance over its own veth, and only over
//! TLS. Its certificate is signed by a CA made for the run, with the
//! racks' side of each appliance's link as an IP SAN, so appliances use
//! `sslmode=verify-full` against that CA, as a site would. (Trust auth
//! inside the run's namespaces: no address outside them exists.)

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

pub const PORT: u16 = 5432;

pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
}

impl Postgres {
    /// initdb, certificates, and start, serving `addresses` (each an
    /// appliance's view of this namespace) on [`PORT`].
    pub fn start(dir: &Path, netns: &str, addresses: &[String]) -> anyhow::Result<Postgres> {
        let bin = newest_bin().context("PostgreSQL is not installed (scripts/prereqs.sh installs it)")?;
        std::fs::create_dir_all(dir)?;
        let data = dir.join("data");
        as_postgres(Command::new("chown").args(["postgres:", &dir.display().to_string()]))?;
        as_postgres(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin.join("initdb"))
                .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "-D"])
                .arg(&data),
        )?;
        // TLS only from the appliances' links; local (socket) for pg_ctl.
        std::fs::write(data.join("pg_hba.conf"), "local all all trust\nhostssl all all 10.90.0.0/16 trust\n")?;
        write_certificates(dir, addresses)?;
        let pg = Postgres { dir: dir.to_path_buf(), bin };
        let options = format!(
            "-h 0.0.0.0 -p {PORT} -k {dir} -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400",
            dir = dir.display()
        );
        as_postgres(
            Command::new("ip")
                .args(["netns", "exec", netns, "runuser", "-u", "postgres", "--"])
                .arg(pg.bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.join("server.log"))
                .args(["-w", "-t", "60", "start", "-o", &options]),
        )
        .with_context(|| format!("starting PostgreSQL; its log: {}", dir.join("server.log").display()))?;
        Ok(pg)
    }

    /// The URL an appliance uses, through `address`, over verified TLS.
    pub fn url(&self, address: &str) -> String {
        format!(
            "postgres://postgres@{address}:{PORT}/postgres?sslmode=verify-full&sslrootcert={}",
            self.dir.join("ca.pem").display()
        )
    }

    /// The database's size on disk, in bytes.
    pub fn size_bytes(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.dir.join("data").join("base"))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn newest_bin() -> Option<PathBuf> {
    let mut bins: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    bins.sort();
    bins.pop().map(|(_, bin)| bin).filter(|b| b.join("pg_ctl").is_file())
}

fn as_postgres(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A CA for the run (`ca.pem`, which appliances trust) and the server's
/// certificate for `addresses`, its key readable by `postgres` alone.
fn write_certificates(dir: &Path, addresses: &[String]) -> anyhow::Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "slipway fleet database CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut server = CertificateParams::default();
    server.distinguished_name.push(DnType::CommonName, "slipway fleet database");
    for address in addresses {
        server.subject_alt_names.push(SanType::IpAddress(address.parse()?));
    }
    let server = server.signed_by(&key, &ca, &ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    std::fs::write(dir.join("server.crt"), server.pem())?;
    let key_path = dir.join("server.key");
    std::fs::write(&key_path, key.serialize_pem())?;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    as_postgres(Command::new("chown").args(["postgres:", &key_path.display().to_string()]))
}
