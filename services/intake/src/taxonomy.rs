//! The active taxonomy version, shared by every request: loaded at start (the shipped rules are
//! published as version 1 on first start), swapped on publish, and refreshed from the database
//! every few seconds so replicas pick up a version another replica published.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use complaints_kit::Shutdown;
use sqlx::PgPool;

use crate::domain::classify::{Taxonomy, TaxonomyRules, default_rules};
use crate::store;

#[derive(Clone)]
pub struct TaxonomyCache {
    current: Arc<RwLock<Arc<Taxonomy>>>,
}

impl TaxonomyCache {
    /// Loads the newest version, publishing the shipped rules first if there is none.
    pub async fn load(pool: &PgPool) -> anyhow::Result<Self> {
        if store::taxonomy(pool, None).await?.is_none() {
            let rules = serde_json::to_value(default_rules())?;
            store::publish_taxonomy(pool, &rules, Some("shipped-default-v1"), "intake").await?;
        }
        let row = store::taxonomy(pool, None)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no taxonomy version"))?;
        let taxonomy = compile(&row)?;
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(taxonomy))),
        })
    }

    pub fn current(&self) -> Arc<Taxonomy> {
        self.current
            .read()
            .map(|t| t.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn install(&self, taxonomy: Taxonomy) {
        if let Ok(mut current) = self.current.write()
            && taxonomy.version >= current.version
        {
            *current = Arc::new(taxonomy);
        }
    }

    /// Keeps up with versions published by other replicas.
    pub async fn refresh(self, pool: PgPool, shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.wait() => return,
            }
            match store::taxonomy(&pool, None).await {
                Ok(Some(row)) if row.version as u32 > self.current().version => match compile(&row)
                {
                    Ok(taxonomy) => {
                        tracing::info!(version = taxonomy.version, "taxonomy version installed");
                        self.install(taxonomy);
                    }
                    Err(error) => {
                        tracing::error!(%error, version = row.version, "stored taxonomy does not compile")
                    }
                },
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "taxonomy refresh failed"),
            }
        }
    }
}

pub fn compile(row: &store::TaxonomyRow) -> anyhow::Result<Taxonomy> {
    let rules: TaxonomyRules = serde_json::from_value(row.rules.clone())?;
    Ok(Taxonomy::compile(row.version as u32, rules)?)
}
