//! Uploading, completing, reading and downloading assets.

use super::{views, Tenant};
use crate::error::{ControlError, Result};
use crate::{presign_audit, AppState};
use mpegflow_api as api;
use mpegflow_domain::names::asset_key;
use mpegflow_objstore::media::{content_type_for_filename, safe_content_type};
use mpegflow_objstore::PutSpec;
use mpegflow_store::{Asset, Deletion, NewAsset, StoreError};
use serde_json::json;
use uuid::Uuid;

/// The caller's asset with this id; anything else is simply not found.
async fn tenant_asset(state: &AppState, tenant: &Tenant, id: Uuid) -> Result<Asset> {
    match state.store.get_asset(tenant.org_id, id).await {
        Ok(a) => Ok(a),
        Err(StoreError::NotFound) => Err(ControlError::NotFound("asset")),
        Err(e) => Err(e.into()),
    }
}

/// A pending asset and a presigned, write-once upload URL for exactly `size` bytes (and the
/// declared SHA-256, when given).
pub async fn create(
    state: &AppState,
    tenant: &Tenant,
    req: &api::AssetIn,
) -> Result<api::AssetUpload> {
    let limit = state.config.upload_limit();
    if req.size > limit {
        let why = if limit == mpegflow_objstore::media::SINGLE_PUT_LIMIT {
            " (the most one PUT may carry; multipart uploads are not offered)"
        } else {
            ""
        };
        return Err(ControlError::invalid(
            "too_large",
            format!(
                "size {} exceeds the upload limit of {limit} bytes{why}",
                req.size
            ),
        ));
    }
    if req
        .content_type
        .as_ref()
        .is_some_and(|t| t.chars().count() > api::MAX_CONTENT_TYPE_CHARS)
    {
        return Err(ControlError::invalid(
            "invalid_body",
            format!(
                "content_type must be at most {} characters",
                api::MAX_CONTENT_TYPE_CHARS
            ),
        ));
    }
    let content_type = safe_content_type(req.content_type.as_deref());
    let id = Uuid::now_v7();
    let key = asset_key(tenant.org_id, id);
    let presigned = state
        .presigner
        .put(
            &key,
            state.config.presign_ttl(),
            &PutSpec {
                size: req.size,
                sha256_hex: req.sha256.as_deref(),
                content_type: Some(&content_type),
            },
        )
        .map_err(|e| ControlError::invalid("invalid_upload", e.to_string()))?;
    state
        .store
        .create_asset(&NewAsset {
            id,
            org_id: tenant.org_id,
            object_key: &key,
            filename: &req.filename,
            content_type: Some(&content_type),
            declared_size: Some(req.size as i64),
            declared_sha256: req.sha256.as_deref(),
            expires_at: time::OffsetDateTime::now_utc()
                + std::time::Duration::from_secs(state.config.unused_asset_ttl_seconds),
        })
        .await?;
    state
        .store
        .audit(&presign_audit(
            tenant.org_id,
            tenant.actor(),
            None,
            id.to_string(),
            &key,
            &presigned,
            json!({ "size": req.size, "content_type": content_type }),
        ))
        .await?;
    Ok(api::AssetUpload {
        id,
        upload_url: presigned.url,
        upload_method: presigned.method.to_owned(),
        upload_headers: presigned.headers.into_iter().collect(),
        expires_at: presigned.expires_at.into(),
    })
}

pub async fn get(state: &AppState, tenant: &Tenant, id: Uuid) -> Result<api::Asset> {
    views::asset(&tenant_asset(state, tenant, id).await?)
}

/// Records a pending asset's bytes. Its upload URL was write-once, so once the object exists
/// nothing can change it: the size is checked against the signed one and the SHA-256 is the
/// store's checksum of the signed `x-amz-checksum-sha256`, or — when none was declared — the
/// control plane's own hash of the stored object.
pub async fn complete(state: &AppState, tenant: &Tenant, id: Uuid) -> Result<api::Asset> {
    let asset = tenant_asset(state, tenant, id).await?;
    if asset.state == "ready" {
        return views::asset(&asset);
    }
    let mut stored = state
        .head_object(&asset.object_key)
        .await
        .map_err(ControlError::Unavailable)?;
    let declared_size = asset.declared_size.unwrap_or(-1);
    if let Some(head) = &stored {
        // A declared SHA-256 was signed in and checked by the store while the body streamed.
        let needs_hash = asset.declared_sha256.is_none() && head.sha256.is_none();
        if needs_hash && head.size as i64 == declared_size {
            stored = state
                .hash_object(&asset.object_key, head.size)
                .await
                .map_err(ControlError::Unavailable)?;
        }
    }
    let Some(head) = stored else {
        return Err(ControlError::Conflict {
            code: "upload_missing",
            message: "nothing was uploaded for this asset".into(),
        });
    };
    if head.size as i64 != declared_size {
        return Err(ControlError::Conflict {
            code: "size_mismatch",
            message: "uploaded size differs from the declared size".into(),
        });
    }
    let sha256 = match (&asset.declared_sha256, &head.sha256) {
        (Some(declared), Some(stored)) if declared != stored => {
            return Err(ControlError::Conflict {
                code: "checksum_mismatch",
                message: "stored checksum differs".into(),
            })
        }
        (_, Some(stored)) => stored.clone(),
        (Some(declared), None) => declared.clone(),
        (None, None) => {
            return Err(ControlError::Unavailable(
                "could not establish the uploaded object's SHA-256".into(),
            ))
        }
    };
    let asset = state
        .store
        .complete_asset(tenant.org_id, asset.id, head.size as i64, &sha256)
        .await?;
    views::asset(&asset)
}

/// A download URL that makes the store answer with a safe content type and as an attachment.
pub async fn download(state: &AppState, tenant: &Tenant, id: Uuid) -> Result<api::AssetDownload> {
    let asset = tenant_asset(state, tenant, id).await?;
    if asset.state != "ready" {
        return Err(ControlError::Conflict {
            code: "asset_not_ready",
            message: "the asset has not been completed".into(),
        });
    }
    let content_type = match asset.content_type.as_deref() {
        Some(t) => safe_content_type(Some(t)),
        None => safe_content_type(Some(content_type_for_filename(&asset.filename))),
    };
    let presigned = state.presigner.download(
        &asset.object_key,
        state.config.presign_ttl(),
        &asset.filename,
        Some(&content_type),
    );
    state
        .store
        .audit(&presign_audit(
            tenant.org_id,
            tenant.actor(),
            asset.source_job_id,
            asset.id.to_string(),
            &asset.object_key,
            &presigned,
            json!({}),
        ))
        .await?;
    Ok(api::AssetDownload {
        url: presigned.url,
        expires_at: presigned.expires_at.into(),
        content_type,
    })
}

/// A page of the org's assets, newest first.
pub async fn list(
    state: &AppState,
    tenant: &Tenant,
    q: &api::ListAssetsQuery,
) -> Result<api::AssetList> {
    let limit = super::page_size(q.limit)?;
    let rows = state
        .store
        .list_assets(tenant.org_id, q.cursor, i64::from(limit) + 1)
        .await?;
    let (page, next_cursor) = super::split_page(rows, limit, |a| a.id);
    Ok(api::AssetList {
        assets: page.iter().map(views::asset).collect::<Result<_>>()?,
        next_cursor,
    })
}

/// Deletes an asset and, once no URL signed for it can be used any more, its bytes. Refused
/// while a queued or running job reads it.
pub async fn delete(state: &AppState, tenant: &Tenant, id: Uuid) -> Result<()> {
    match state
        .store
        .delete_asset(
            tenant.org_id,
            id,
            tenant.actor(),
            state.config.object_free_at(),
        )
        .await
    {
        Ok(Deletion::Deleted) => Ok(()),
        Ok(Deletion::InUse(job)) => Err(ControlError::Conflict {
            code: "asset_in_use",
            message: format!("job {job} (queued or running) reads this asset; cancel it or wait"),
        }),
        Err(StoreError::NotFound) => Err(ControlError::NotFound("asset")),
        Err(e) => Err(e.into()),
    }
}
