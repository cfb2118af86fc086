//! Declared inputs/outputs of a stored job, and checks on the files a worker says it produced.

use crate::error::{ControlError, Result};
use mpegflow_domain::command::IoSpec;
use mpegflow_store::Job;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use uuid::Uuid;

/// One input as stored on the job row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredInput {
    pub alias: String,
    pub asset_id: Uuid,
    pub filename: String,
    pub path: String,
    pub object_key: String,
    pub size: Option<i64>,
    pub sha256: Option<String>,
}

/// One declared output as stored on the job row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredOutput {
    pub alias: String,
    pub filename: String,
}

pub fn stored_inputs(job: &Job) -> Result<Vec<StoredInput>> {
    serde_json::from_value(job.inputs.clone())
        .map_err(|e| ControlError::Internal(format!("job {} inputs: {e}", job.id)))
}

pub fn stored_outputs(job: &Job) -> Result<Vec<StoredOutput>> {
    serde_json::from_value(job.outputs.clone())
        .map_err(|e| ControlError::Internal(format!("job {} outputs: {e}", job.id)))
}

pub fn io_spec(job: &Job) -> Result<IoSpec> {
    let mut spec = IoSpec::default();
    for i in stored_inputs(job)? {
        spec.add_input(&i.alias, &i.filename)?;
    }
    for o in stored_outputs(job)? {
        spec.add_output(&o.alias, &o.filename)?;
    }
    Ok(spec)
}

/// A produced file that passed the checks.
#[derive(Debug, Clone)]
pub struct ProducedFile {
    pub alias: String,
    /// Relative to `out/`: `<alias>/<name>`.
    pub path: String,
    /// The name within its output (the file name, or the entry of a directory output).
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

fn rejected(message: String) -> ControlError {
    ControlError::invalid("output_rejected", message)
}

/// Checks a worker's list of produced files against the job's declared outputs and limits.
pub fn check_produced(
    spec: &IoSpec,
    files: impl IntoIterator<Item = (String, u64, String)>,
    max_bytes: u64,
    max_files: u32,
) -> Result<Vec<ProducedFile>> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut total: u64 = 0;
    for (path, size, sha256) in files {
        if out.len() >= max_files as usize {
            return Err(rejected(format!("more than {max_files} output files")));
        }
        let (alias, name) = spec
            .output_of(&path)
            .ok_or_else(|| rejected(format!("{path:?} is not a declared output")))?;
        if !mpegflow_domain::names::is_sha256_hex(&sha256) {
            return Err(rejected(format!(
                "{path:?}: sha256 must be 64 lowercase hex characters"
            )));
        }
        if !seen.insert(path.clone()) {
            return Err(rejected(format!("{path:?} listed twice")));
        }
        total = total.saturating_add(size);
        if total > max_bytes {
            return Err(ControlError::invalid(
                "output_limit",
                format!("outputs exceed {max_bytes} bytes"),
            ));
        }
        out.push(ProducedFile {
            alias: alias.to_owned(),
            name: name.to_owned(),
            path,
            size,
            sha256,
        });
    }
    if let Some(missing) = spec
        .outputs
        .keys()
        .find(|a| !out.iter().any(|f| &f.alias == *a))
    {
        return Err(ControlError::invalid(
            "output_missing",
            format!("output {missing:?} produced no file"),
        ));
    }
    Ok(out)
}

/// A worker's zstd-compressed stderr, decompressed to at most 16 MiB (a worker could send a
/// decompression bomb).
pub fn decompress_stderr(zstd_bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut buf = Vec::new();
    if let Ok(decoder) = zstd::stream::read::Decoder::new(zstd_bytes) {
        let _ = decoder.take(16 * 1024 * 1024).read_to_end(&mut buf);
    }
    buf
}
