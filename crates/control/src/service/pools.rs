//! The pools a tenant may submit to.

use super::Tenant;
use crate::error::{ControlError, Result};
use crate::AppState;
use mpegflow_api as api;

pub async fn list(state: &AppState, tenant: &Tenant) -> Result<api::PoolList> {
    let pools = state
        .store
        .pools_for_org(tenant.org_id)
        .await?
        .into_iter()
        .map(|(pool, live)| {
            Ok(api::Pool {
                name: api::PoolName::parse(pool.name)
                    .map_err(|e| ControlError::Internal(e.to_string()))?,
                shared: pool.org_id.is_none(),
                live_workers: live.clamp(0, i64::from(u32::MAX)) as u32,
            })
        })
        .collect::<Result<_>>()?;
    Ok(api::PoolList { pools })
}
