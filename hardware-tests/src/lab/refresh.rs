//! `lab up --deploy lab-debian --os-refresh`: once the three nodes are one
//! Swarm (three managers) on `lab-debian`, an OS-refresh campaign moves
//! them to release 2 one node at a time, the UPS going to battery and back
//! mid-way; then a campaign to an image that writes fine but cannot boot
//! rolls its first node back to release 2, where it rejoins, and pauses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::lab_variant::{ensure_variant, Variant};
use anyhow::bail;

use super::campaign::{self, CampaignFacts};
use super::{progress, register_image, wait_for_members, LabOptions, Watch};

pub const RELEASE_IMAGE: &str = "lab-debian-r2";
pub const BROKEN_IMAGE: &str = "lab-debian-broken";
/// The refresh's health check: back (node agent on the new image, joined)
/// this long after the image is written. One Debian node under TCG takes
/// 65-110 s from written to joined (measured, three Swarm managers busy on
/// 2 cores); the broken image never comes back, so its campaign bounds it
/// tighter to roll back sooner. The rollback itself is bounded by the join
/// deadline, not by this.
const BACK_WITHIN: Duration = Duration::from_secs(600);
const BROKEN_BACK_WITHIN: Duration = Duration::from_secs(160);

/// The two derived images (cached beside the base image).
pub struct Images {
    release: PathBuf,
    broken: PathBuf,
}

#[derive(Default)]
pub struct Outcome {
    pub release: Option<CampaignFacts>,
    pub broken: Option<CampaignFacts>,
}

pub fn prepare(base: &Path) -> anyhow::Result<Images> {
    let mut say = |step: &str| progress(step);
    let release = ensure_variant(base, Variant::Release(2), &mut say).map_err(anyhow::Error::msg)?;
    let broken = ensure_variant(base, Variant::BrokenBoot, &mut say).map_err(anyhow::Error::msg)?;
    progress(&format!(
        "OS refresh images: {RELEASE_IMAGE} ({} MiB stored), {BROKEN_IMAGE} (boots to no root filesystem)",
        release.imported.stored_bytes >> 20
    ));
    Ok(Images { release: release.path, broken: broken.path })
}

pub fn run(watch: &mut Watch, images: &Images, opts: &LabOptions, out: &mut Outcome) -> anyhow::Result<()> {
    register_image(watch, RELEASE_IMAGE, "2", "raw+zstd", &images.release)?;
    register_image(watch, BROKEN_IMAGE, "3", "raw+zstd", &images.broken)?;
    // Three reinstalls one after another: allow each the lab's timeout.
    let nodes = watch.nodes.len() as u32;
    let facts = campaign::os_refresh(watch, RELEASE_IMAGE, BACK_WITHIN, Some(&opts.slipway_bin), opts.timeout * nodes)?;
    let state = facts.state.clone();
    out.release = Some(facts);
    if state != "completed" {
        bail!("the OS refresh to {RELEASE_IMAGE} ended {state}");
    }
    wait_for_members(watch, opts.timeout)?;
    out.broken = Some(campaign::os_refresh(watch, BROKEN_IMAGE, BROKEN_BACK_WITHIN, None, opts.timeout * 2)?);
    // The rolled-back node is in the Swarm again.
    wait_for_members(watch, opts.timeout)
}
