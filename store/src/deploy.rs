//! The image catalog and deployments.

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{parse_col, rfc3339, Result, Store, StoreError};
use model::deploy::{Arch, BootMode, DeployPhase, DeploymentSpec};
use model::lifecycle::{MachineState, Trigger};
use wire::WipeMode;

/// What an operator says about an image when registering it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageMeta {
    pub name: String,
    pub os: String,
    pub version: String,
    pub arch: Arch,
    pub boot_mode: BootMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageState {
    Importing,
    Available,
    Failed,
}

impl ImageState {
    fn as_str(self) -> &'static str {
        match self {
            ImageState::Importing => "importing",
            ImageState::Available => "available",
            ImageState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Image {
    #[serde(flatten)]
    pub meta: ImageMeta,
    pub state: ImageState,
    /// Bytes the image occupies on a disk.
    pub raw_bytes: Option<i64>,
    /// SHA-256 of the raw content.
    pub sha256: Option<String>,
    /// Size of the stored raw+zstd file.
    pub stored_bytes: Option<i64>,
    /// The boot face of the appliance holding the content; others on the
    /// same database fetch it from there (checked against `sha256`).
    pub held_at: Option<String>,
    pub error: Option<String>,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Deployment {
    pub machine_id: String,
    pub image: String,
    pub spec: DeploymentSpec,
    pub phase: DeployPhase,
    pub bytes_written: i64,
    pub total_bytes: i64,
    /// The disk the agent chose, e.g. `/dev/vda`.
    pub disk: Option<String>,
    pub error: Option<String>,
    pub updated_at: String,
}

fn image_from_row(r: &AnyRow) -> Result<Image> {
    let state: String = r.try_get("state")?;
    Ok(Image {
        meta: ImageMeta {
            name: r.try_get("name")?,
            os: r.try_get("os")?,
            version: r.try_get("version")?,
            arch: parse_col(r, "arch")?,
            boot_mode: parse_col(r, "boot_mode")?,
        },
        state: serde_json::from_value(serde_json::json!(state))
            .map_err(|_| StoreError::Corrupt(format!("image state {state}")))?,
        raw_bytes: r.try_get("raw_bytes")?,
        sha256: r.try_get("sha256")?,
        stored_bytes: r.try_get("stored_bytes")?,
        held_at: r.try_get("held_at")?,
        error: r.try_get("error")?,
        created_at: rfc3339(r.try_get("created_at_ms")?),
    })
}

/// A deployment's spec from its row: `spec` holds all but the cluster,
/// `cluster` the join spec (rows written before migration 0011 carry their
/// cluster inside `spec`, and keep it).
pub(crate) fn spec_from_row(r: &AnyRow) -> Result<DeploymentSpec> {
    let corrupt = |what: &str, e: serde_json::Error| StoreError::Corrupt(format!("deployment {what}: {e}"));
    let text: String = r.try_get("spec")?;
    let mut spec: DeploymentSpec = serde_json::from_str(&text).map_err(|e| corrupt("spec", e))?;
    if let Some(cluster) = r.try_get::<Option<String>, _>("cluster")? {
        spec.cluster = Some(serde_json::from_str(&cluster).map_err(|e| corrupt("cluster", e))?);
    }
    Ok(spec)
}

fn deployment_from_row(r: &AnyRow) -> Result<Deployment> {
    let phase: String = r.try_get("phase")?;
    Ok(Deployment {
        machine_id: r.try_get("machine_id")?,
        image: r.try_get("image")?,
        spec: spec_from_row(r)?,
        phase: serde_json::from_value(serde_json::json!(phase))
            .map_err(|_| StoreError::Corrupt(format!("deploy phase {phase}")))?,
        bytes_written: r.try_get("bytes_written")?,
        total_bytes: r.try_get("total_bytes")?,
        disk: r.try_get("disk")?,
        error: r.try_get("error")?,
        updated_at: rfc3339(r.try_get("updated_at_ms")?),
    })
}

/// Unfinished OS-refresh campaigns that install `image`, or whose nodes
/// in progress would roll back to it (their `old_version`).
async fn campaigns_needing(tx: &mut sqlx::Transaction<'_, sqlx::Any>, image: &str) -> Result<Vec<String>> {
    let open =
        sqlx::query("SELECT id, action FROM campaigns WHERE state IN ('scheduled', 'running', 'held', 'paused')")
            .fetch_all(&mut **tx)
            .await?;
    let mut needing = vec![];
    for row in &open {
        let id: String = row.try_get("id")?;
        let action: String = row.try_get("action")?;
        let Ok(model::campaign::Action::OsRefresh { image: target }) = serde_json::from_str(&action) else { continue };
        let rolls_back_to = sqlx::query(
            "SELECT 1 AS one FROM campaign_nodes WHERE campaign_id = $1 AND old_version = $2 \
             AND state IN ('applying', 'verifying')",
        )
        .bind(&id)
        .bind(image)
        .fetch_optional(&mut **tx)
        .await?;
        if target == image || rolls_back_to.is_some() {
            needing.push(id);
        }
    }
    Ok(needing)
}

impl Store {
    /// Registers an image in `importing`. A name is taken once.
    pub async fn create_image(&self, meta: &ImageMeta) -> Result<Image> {
        let now = self.now_ms();
        let inserted = sqlx::query(
            "INSERT INTO images (name, os, version, arch, boot_mode, state, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&meta.name)
        .bind(&meta.os)
        .bind(&meta.version)
        .bind(meta.arch.as_str())
        .bind(meta.boot_mode.as_str())
        .bind(ImageState::Importing.as_str())
        .bind(now)
        .execute(&self.writer)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("an image named {:?} exists", meta.name)));
        }
        self.record_event(None, "image.importing", serde_json::json!({ "image": meta.name })).await?;
        self.image(&meta.name).await?.ok_or_else(|| StoreError::Corrupt(format!("image {} vanished", meta.name)))
    }

    /// Notes where `name`'s import by path reads from (opaque to the store).
    pub async fn set_import_source(&self, name: &str, source: &str) -> Result<()> {
        sqlx::query("UPDATE images SET import_source = $1 WHERE name = $2")
            .bind(source)
            .bind(name)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Imports by path still `importing`: at start, ones a crash cut off.
    pub async fn interrupted_imports(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT name, import_source FROM images WHERE state = 'importing' AND import_source IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("name")?, r.try_get("import_source")?))).collect()
    }

    /// Records how an import ended; an available image's content is held
    /// at `held_at` (the importing appliance's boot face, if it has one).
    pub async fn finish_image(
        &self,
        name: &str,
        outcome: std::result::Result<&images::catalog::Imported, &str>,
        held_at: Option<&str>,
    ) -> Result<()> {
        let boot_mode = outcome.ok().map(|done| BootMode::from_firmwares(done.bootable.bios, done.bootable.uefi));
        let query = match outcome {
            Ok(done) => sqlx::query(
                "UPDATE images SET boot_mode = $1, state = $2, raw_bytes = $3, sha256 = $4, stored_bytes = $5, held_at = $6, error = NULL, updated_at_ms = $7 WHERE name = $8",
            )
            .bind(boot_mode.unwrap_or_default().as_str())
            .bind(ImageState::Available.as_str())
            .bind(done.raw_bytes as i64)
            .bind(done.sha256.clone())
            .bind(done.stored_bytes as i64)
            .bind(held_at.map(str::to_string)),
            Err(error) => sqlx::query(
                "UPDATE images SET state = $1, raw_bytes = $2, sha256 = $3, stored_bytes = $4, held_at = $5, error = $6, updated_at_ms = $7 WHERE name = $8",
            )
            .bind(ImageState::Failed.as_str())
            .bind(None::<i64>)
            .bind(None::<String>)
            .bind(None::<i64>)
            .bind(None::<String>)
            .bind(error.to_string()),
        };
        query.bind(self.now_ms()).bind(name).execute(&self.writer).await?;
        let (kind, detail) = match outcome {
            Ok(done) => (
                "image.available",
                serde_json::json!({ "image": name, "raw_bytes": done.raw_bytes, "sha256": done.sha256,
                                    "boot_mode": boot_mode }),
            ),
            Err(error) => ("image.failed", serde_json::json!({ "image": name, "error": error })),
        };
        self.record_event(None, kind, detail).await
    }

    pub async fn image(&self, name: &str) -> Result<Option<Image>> {
        let row = sqlx::query("SELECT * FROM images WHERE name = $1").bind(name).fetch_optional(&self.pool).await?;
        row.as_ref().map(image_from_row).transpose()
    }

    pub async fn images(&self) -> Result<Vec<Image>> {
        let rows = sqlx::query("SELECT * FROM images ORDER BY name").fetch_all(&self.pool).await?;
        rows.iter().map(image_from_row).collect()
    }

    /// Deletes an image no machine is deploying or running; returns whether
    /// it existed.
    pub async fn delete_image(&self, name: &str) -> Result<bool> {
        let mut tx = self.writer.begin().await?;
        let users = sqlx::query(
            "SELECT d.machine_id FROM deployments d JOIN machines m ON m.id = d.machine_id \
             WHERE d.image = $1 AND m.state IN ('deploying', 'deployed', 'joined', 'refreshing')",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        if !users.is_empty() {
            let ids: Vec<String> = users.iter().map(|r| r.try_get("machine_id")).collect::<Result<_, _>>()?;
            return Err(StoreError::Conflict(format!("image {name:?} is in use by machine(s) {}", ids.join(", "))));
        }
        let campaigns = campaigns_needing(&mut tx, name).await?;
        if !campaigns.is_empty() {
            return Err(StoreError::Conflict(format!(
                "image {name:?} is needed by unfinished campaign(s) {} (its target, or the image a node rolls back to)",
                campaigns.join(", ")
            )));
        }
        sqlx::query("DELETE FROM deployments WHERE image = $1").bind(name).execute(&mut *tx).await?;
        let deleted = sqlx::query("DELETE FROM images WHERE name = $1").bind(name).execute(&mut *tx).await?;
        if deleted.rows_affected() == 1 {
            Self::event_in(&mut *tx, None, self.now_ms(), "image.deleted", serde_json::json!({ "image": name }))
                .await?;
        }
        tx.commit().await?;
        Ok(deleted.rows_affected() == 1)
    }

    /// Records a deployment and moves a `ready` machine to `deploying`, in
    /// one transaction; refuses a machine in any other state.
    /// A new deployment row in its first phase (the caller removed any old one).
    pub(super) async fn insert_deployment_in(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        machine_id: &str,
        image: &str,
        spec: &DeploymentSpec,
        total_bytes: i64,
        now: i64,
    ) -> Result<()> {
        let unwritable = |e: serde_json::Error| StoreError::Corrupt(format!("deployment spec: {e}"));
        let cluster = spec.cluster.as_ref().map(serde_json::to_string).transpose().map_err(unwritable)?;
        let rest = serde_json::to_string(&DeploymentSpec { cluster: None, ..spec.clone() }).map_err(unwritable)?;
        sqlx::query(
            "INSERT INTO deployments (machine_id, image, spec, cluster, phase, bytes_written, total_bytes, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $7)",
        )
        .bind(machine_id)
        .bind(image)
        .bind(rest)
        .bind(cluster)
        .bind(DeployPhase::Requested.as_str())
        .bind(total_bytes)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn start_deployment(
        &self,
        machine_id: &str,
        image: &Image,
        spec: &DeploymentSpec,
        deadline_ms: i64,
    ) -> Result<Deployment> {
        let total = image
            .raw_bytes
            .ok_or_else(|| StoreError::Conflict(format!("image {:?} is not available", image.meta.name)))?;
        let mut tx = self.writer.begin().await?;
        let moved = self
            .fire_in(&mut tx, machine_id, Trigger::DeployRequested, Trigger::DeployRequested.cause(), Some(deadline_ms))
            .await?;
        match moved {
            Some((MachineState::Ready, MachineState::Deploying)) => {}
            Some((from, _)) => {
                return Err(StoreError::Conflict(format!(
                    "machine {machine_id} is {from}; only a ready machine can be deployed"
                )))
            }
            None => return Err(StoreError::Conflict(format!("machine {machine_id} does not exist"))),
        }
        let now = self.now_ms();
        sqlx::query("DELETE FROM deployments WHERE machine_id = $1").bind(machine_id).execute(&mut *tx).await?;
        Self::insert_deployment_in(&mut tx, machine_id, &image.meta.name, spec, total, now).await?;
        Self::event_in(
            &mut *tx,
            Some(machine_id),
            now,
            "deploy.requested",
            serde_json::json!({ "image": image.meta.name, "spec": spec }),
        )
        .await?;
        tx.commit().await?;
        self.deployment(machine_id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("deployment of {machine_id} vanished")))
    }

    pub async fn deployment(&self, machine_id: &str) -> Result<Option<Deployment>> {
        let row = sqlx::query("SELECT * FROM deployments WHERE machine_id = $1")
            .bind(machine_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(deployment_from_row).transpose()
    }

    /// Records an agent's report on its deployment. Phase changes are
    /// events; byte counts alone only update the row (they come often).
    pub async fn deploy_progress(
        &self,
        machine_id: &str,
        phase: DeployPhase,
        bytes_written: i64,
        disk: Option<&str>,
        error: Option<&str>,
        configured: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let before = sqlx::query("SELECT phase FROM deployments WHERE machine_id = $1")
            .bind(machine_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get::<String, _>("phase"))
            .transpose()?;
        let Some(before) = before else {
            return Err(StoreError::Conflict(format!("machine {machine_id} has no deployment")));
        };
        sqlx::query(
            "UPDATE deployments SET phase = $1, bytes_written = $2, disk = COALESCE($3, disk), error = $4, updated_at_ms = $5 \
             WHERE machine_id = $6",
        )
        .bind(phase.as_str())
        .bind(bytes_written)
        .bind(disk.map(str::to_string))
        .bind(error.map(str::to_string))
        .bind(self.now_ms())
        .bind(machine_id)
        .execute(&mut *tx)
        .await?;
        if before != phase.as_str() {
            deploy_phase_ended(&before, phase, Self::deploy_phase_began_ms(&mut tx, machine_id).await?);
            let detail = serde_json::json!({
                "phase": phase, "bytes_written": bytes_written, "disk": disk, "error": error, "configured": configured,
            });
            Self::event_in(&mut *tx, Some(machine_id), self.now_ms(), "deploy.phase", detail).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

impl Store {
    /// Moves a deployed (or failed) machine to `releasing` and records how
    /// to wipe it, in one transaction.
    pub async fn start_release(&self, machine_id: &str, mode: WipeMode, deadline_ms: i64) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let cause = Trigger::ReleaseRequested.cause();
        match self.fire_in(&mut tx, machine_id, Trigger::ReleaseRequested, cause, Some(deadline_ms)).await? {
            Some((_, MachineState::Releasing)) => {}
            Some((from, _)) => {
                return Err(StoreError::Conflict(format!(
                    "machine {machine_id} is {from}; only a deployed, joined or failed machine can be released"
                )))
            }
            None => return Err(StoreError::Conflict(format!("machine {machine_id} does not exist"))),
        }
        let now = self.now_ms();
        // The installed OS is about to be wiped: its agent's credential and
        // last report go with it.
        for table in ["node_tokens", "node_status", "releases"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE machine_id = $1"))
                .bind(machine_id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("INSERT INTO releases (machine_id, mode, created_at_ms) VALUES ($1, $2, $3)")
            .bind(machine_id)
            .bind(mode.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        Self::event_in(&mut *tx, Some(machine_id), now, "release.requested", serde_json::json!({ "mode": mode }))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The wipe mode of a machine being released.
    pub async fn release_mode(&self, machine_id: &str) -> Result<Option<WipeMode>> {
        let row = sqlx::query("SELECT mode FROM releases WHERE machine_id = $1")
            .bind(machine_id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(text) = row.map(|r| r.try_get::<String, _>("mode")).transpose()? else { return Ok(None) };
        WipeMode::parse(&text).map(Some).ok_or_else(|| StoreError::Corrupt(format!("wipe mode {text:?}")))
    }

    /// Ends a release: on success the machine is `ready` with no
    /// deployment (its image is free to delete); on failure it is `failed`
    /// in phase `releasing` with `error`.
    pub async fn finish_release(&self, machine_id: &str, disks: &[String], error: Option<&str>) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        let now = self.now_ms();
        let detail = serde_json::json!({ "disks": disks, "error": error });
        Self::event_in(&mut *tx, Some(machine_id), now, "release.wiped", detail).await?;
        let (trigger, reason) = match error {
            None => (Trigger::Wiped, Trigger::Wiped.cause()),
            Some(error) => (Trigger::WipeFailed, error),
        };
        self.fire_in(&mut tx, machine_id, trigger, reason, None).await?;
        sqlx::query("DELETE FROM releases WHERE machine_id = $1").bind(machine_id).execute(&mut *tx).await?;
        if error.is_none() {
            sqlx::query("DELETE FROM deployments WHERE machine_id = $1").bind(machine_id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// One phase of a deployment took from `began_ms` until now.
pub fn observe_deploy_phase(phase: &'static str, began_ms: i64) {
    let secs = (super::wall_clock_ms() - began_ms).max(0) as f64 / 1000.0;
    metrics::histogram!("slipway_deploy_phase_duration_seconds", "phase" => phase).record(secs);
}

/// Records `slipway_deploy_phase_duration_seconds` (described in
/// `api::metrics_catalog`). A deployment moved from phase `before` to `after`; `began_ms` is when
/// `before` began. Only forward moves finish a phase: a failure does not,
/// nor does an agent that restarts writing after a reboot.
fn deploy_phase_ended(before: &str, after: DeployPhase, began_ms: Option<i64>) {
    let rank =
        |phase: &str| ["requested", "writing", "verifying", "configuring", "written"].iter().position(|p| *p == phase);
    let (Some(from), Some(to), Some(began_ms)) = (rank(before), rank(after.as_str()), began_ms) else {
        return;
    };
    if to <= from {
        return;
    }
    // `requested`, `writing`, `verifying`, `configuring` name the phase
    // being left.
    if let Some(phase) = ["start", "write", "verify", "firstboot"].get(from) {
        observe_deploy_phase(phase, began_ms);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sqlx::Row;

    use super::*;
    use crate::test_db;

    test_db::on_both_databases!(
        the_cluster_has_its_own_column_and_older_rows_keep_theirs,
        an_image_an_unfinished_campaign_needs_is_not_deleted,
    );

    /// The target of an unfinished OS refresh, and the image a node in
    /// progress would roll back to, stay until the campaign ends.
    async fn an_image_an_unfinished_campaign_needs_is_not_deleted(store: Store) {
        use model::campaign::{Campaign, CampaignState, NodeProgress};
        let (id, _) = store.ensure_machine("52:54:00:00:05:02".parse().unwrap(), "test", 60_000).await.unwrap();
        for name in ["old", "new", "spare"] {
            let meta = ImageMeta {
                name: name.into(),
                os: "debian".into(),
                version: "12".into(),
                arch: Arch::X86_64,
                boot_mode: BootMode::Bios,
            };
            store.create_image(&meta).await.unwrap();
        }
        let campaign = Campaign {
            id: "c1".into(),
            name: "to new".into(),
            targets: serde_json::from_value(json!({ "machines": [id] })).unwrap(),
            action: serde_json::from_value(json!({ "os_refresh": { "image": "new" } })).unwrap(),
            schedule: model::campaign::Schedule::Now,
            rollout: serde_json::from_value(json!({})).unwrap(),
            gates: serde_json::from_value(json!({})).unwrap(),
            state: CampaignState::Running,
            reason: None,
            acknowledged_failures: 0,
            created_at_ms: 1,
            updated_at_ms: 1,
            started_at_ms: None,
            finished_at_ms: None,
        };
        store.insert_campaign(&campaign, &[NodeProgress::pending(&id, 0, None)]).await.unwrap();
        assert!(store.start_campaign_node("c1", &id).await.unwrap());
        store.note_campaign_node("c1", &id, Some("old"), false).await.unwrap();
        for needed in ["new", "old"] {
            let err = store.delete_image(needed).await.unwrap_err();
            assert!(err.to_string().contains("c1"), "{needed}: {err}");
        }
        assert!(store.delete_image("spare").await.unwrap(), "an image nothing needs goes");
        sqlx::query("UPDATE campaigns SET state = 'completed'").execute(&store.writer).await.unwrap();
        assert!(store.delete_image("old").await.unwrap(), "once the campaign ended");
    }

    async fn the_cluster_has_its_own_column_and_older_rows_keep_theirs(store: Store) {
        let (id, _) = store.ensure_machine("52:54:00:00:05:01".parse().unwrap(), "test", 60_000).await.unwrap();
        let spec: DeploymentSpec = serde_json::from_value(json!({
            "image": "img", "hostname": "n1", "users": [{"name": "ops"}],
            "cluster": {"kind": "swarm", "cluster": "rack7"},
        }))
        .unwrap();
        let meta = |name: &str| ImageMeta {
            name: name.into(),
            os: "debian".into(),
            version: "12".into(),
            arch: Arch::X86_64,
            boot_mode: BootMode::Bios,
        };
        store.create_image(&meta("img")).await.unwrap();
        let mut tx = store.writer.begin().await.unwrap();
        Store::insert_deployment_in(&mut tx, &id, "img", &spec, 10, 1).await.unwrap();
        tx.commit().await.unwrap();
        let row = sqlx::query("SELECT spec, cluster FROM deployments WHERE machine_id = $1")
            .bind(&id)
            .fetch_one(&store.pool)
            .await
            .unwrap();
        let (rest, cluster): (String, Option<String>) = (row.try_get("spec").unwrap(), row.try_get("cluster").unwrap());
        assert!(!rest.contains("rack7"), "the cluster is not kept twice: {rest}");
        assert_eq!(cluster.as_deref(), Some(r#"{"kind":"swarm","cluster":"rack7"}"#));
        assert_eq!(store.deployment(&id).await.unwrap().unwrap().spec, spec, "read back whole, users and all");
        // A row written before the column existed carries its cluster in `spec`.
        sqlx::query("UPDATE deployments SET spec = $1, cluster = NULL WHERE machine_id = $2")
            .bind(serde_json::to_string(&spec).unwrap())
            .bind(&id)
            .execute(&store.writer)
            .await
            .unwrap();
        assert_eq!(store.deployment(&id).await.unwrap().unwrap().spec, spec);
        // A spec the type does not know is corrupt, not silently emptied.
        sqlx::query("UPDATE deployments SET spec = $1 WHERE machine_id = $2")
            .bind(r#"{"image":"img","hostname":"n1","userz":[]}"#)
            .bind(&id)
            .execute(&store.writer)
            .await
            .unwrap();
        assert!(matches!(store.deployment(&id).await, Err(StoreError::Corrupt(_))));
    }
}
