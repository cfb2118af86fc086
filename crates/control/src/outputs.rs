//! Declared inputs/outputs of a stored job, and checks on the files a worker says it produced.

use crate::error::{ControlError, Result};
use crate::ObjectHead;
use mpegflow_domain::command::IoSpec;
use mpegflow_domain::job::error_code;
use mpegflow_objstore::media::SINGLE_PUT_LIMIT;
use mpegflow_store::{Job, UploadGrant};
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

/// The code of an attempt whose report and the store disagree.
pub use mpegflow_domain::job::error_code::OUTPUT_MISMATCH;

fn rejected(message: String) -> ControlError {
    ControlError::invalid("output_rejected", message)
}

/// Checks files a worker names (for upload URLs or in its report) against the job's declared
/// outputs and limits: declared paths only, each once, well-formed SHA-256, each within one
/// PUT, at most `max_files` and `max_bytes` together.
pub fn check_files(
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
        if size > SINGLE_PUT_LIMIT {
            return Err(ControlError::invalid(
                "output_limit",
                format!("{path:?} is larger than one upload may be ({SINGLE_PUT_LIMIT} bytes)"),
            ));
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
    Ok(out)
}

/// [`check_files`] for a finished attempt's report: also every declared output produced a file.
pub fn check_produced(
    spec: &IoSpec,
    files: impl IntoIterator<Item = (String, u64, String)>,
    max_bytes: u64,
    max_files: u32,
) -> Result<Vec<ProducedFile>> {
    let out = check_files(spec, files, max_bytes, max_files)?;
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

/// Why a reported output is not accepted as the attempt's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverified {
    pub code: &'static str,
    pub message: String,
}

/// The worker's report against what it was granted: the same paths, sizes and SHA-256s, no
/// more and no fewer. (Each granted PUT had its size and SHA-256 signed in, so the store holds
/// nothing else under those keys.)
pub fn match_grants(reported: &[ProducedFile], grants: &[UploadGrant]) -> Result<(), Unverified> {
    let mismatch = |message: String| Unverified {
        code: OUTPUT_MISMATCH,
        message,
    };
    for f in reported {
        match grants.iter().find(|g| g.path == f.path) {
            None => {
                return Err(mismatch(format!(
                    "{:?} was reported but no upload was granted for it",
                    f.path
                )))
            }
            // The message is shown to the tenant: it names no hash the worker claimed.
            Some(g) if g.size != f.size as i64 || g.sha256 != f.sha256 => {
                return Err(mismatch(format!(
                    "{:?} was reported with another size or SHA-256 than its upload was granted",
                    f.path
                )))
            }
            Some(_) => {}
        }
    }
    if let Some(g) = grants
        .iter()
        .find(|g| !reported.iter().any(|f| f.path == g.path))
    {
        return Err(mismatch(format!(
            "{:?} was granted an upload but is missing from the report",
            g.path
        )));
    }
    Ok(())
}

/// What the store holds under a granted key against the grant.
pub fn match_stored(grant: &UploadGrant, stored: Option<&ObjectHead>) -> Result<(), Unverified> {
    let Some(stored) = stored else {
        return Err(Unverified {
            code: error_code::OUTPUT_NOT_STORED,
            message: format!("{:?} was not uploaded", grant.path),
        });
    };
    if stored.size != grant.size as u64 {
        return Err(Unverified {
            code: OUTPUT_MISMATCH,
            message: format!(
                "{:?}: the store holds {} bytes, the grant was for {}",
                grant.path, stored.size, grant.size
            ),
        });
    }
    match &stored.sha256 {
        Some(sha) if *sha != grant.sha256 => Err(Unverified {
            code: OUTPUT_MISMATCH,
            message: format!(
                "{:?}: the store holds other bytes than the upload was granted for (sha256 {sha})",
                grant.path
            ),
        }),
        Some(_) => Ok(()),
        None => Err(Unverified {
            code: OUTPUT_MISMATCH,
            message: format!("{:?}: the store reported no checksum", grant.path),
        }),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> IoSpec {
        let mut s = IoSpec::default();
        s.add_output("out", "o.mp4").unwrap();
        s.add_output("hls", "h/").unwrap();
        s
    }
    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn file(p: &str, size: u64, sha: &str) -> (String, u64, String) {
        (p.into(), size, sha.into())
    }

    fn code(r: Result<Vec<ProducedFile>>) -> String {
        match r {
            Err(ControlError::Invalid { code, .. }) => code.to_owned(),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn only_declared_bounded_files_pass() {
        let s = spec();
        assert!(check_files(&s, [file("out/o.mp4", 1, A)], 10, 5).is_ok());
        assert!(
            check_files(&s, [file("hls/1.ts", 1, A)], 10, 5).is_ok(),
            "a subset is fine"
        );
        assert_eq!(
            code(check_files(&s, [file("x/o.mp4", 1, A)], 10, 5)),
            "output_rejected"
        );
        assert_eq!(
            code(check_files(&s, [file("out/o.mp4", 1, "A")], 10, 5)),
            "output_rejected"
        );
        assert_eq!(
            code(check_files(
                &s,
                [file("hls/1.ts", 1, A), file("hls/1.ts", 1, A)],
                10,
                5
            )),
            "output_rejected"
        );
        assert_eq!(
            code(check_files(
                &s,
                [file("hls/1.ts", 6, A), file("hls/2.ts", 5, A)],
                10,
                5
            )),
            "output_limit"
        );
        assert_eq!(
            code(check_files(
                &s,
                (0..3).map(|i| file(&format!("hls/{i}.ts"), 1, A)),
                10,
                2
            )),
            "output_rejected"
        );
        assert_eq!(
            code(check_files(
                &s,
                [file("out/o.mp4", SINGLE_PUT_LIMIT + 1, A)],
                u64::MAX,
                5
            )),
            "output_limit"
        );
        assert_eq!(
            code(check_produced(&s, [file("out/o.mp4", 1, A)], 10, 5)),
            "output_missing"
        );
    }

    fn produced(p: &str, size: u64, sha: &str) -> ProducedFile {
        check_files(&spec(), [file(p, size, sha)], u64::MAX, 5)
            .unwrap()
            .remove(0)
    }
    fn grant(p: &str, size: i64, sha: &str) -> UploadGrant {
        UploadGrant {
            path: p.into(),
            size,
            sha256: sha.into(),
        }
    }

    #[test]
    fn reports_must_equal_the_grants() {
        let g = [grant("out/o.mp4", 3, A)];
        assert_eq!(match_grants(&[produced("out/o.mp4", 3, A)], &g), Ok(()));
        for bad in [
            vec![produced("out/o.mp4", 3, B)],
            vec![produced("out/o.mp4", 4, A)],
            vec![produced("out/o.mp4", 3, A), produced("hls/1.ts", 3, A)],
            vec![],
        ] {
            assert_eq!(
                match_grants(&bad, &g).unwrap_err().code,
                OUTPUT_MISMATCH,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_store_must_hold_the_granted_bytes() {
        let g = grant("out/o.mp4", 3, A);
        let head = |size, sha: Option<&str>| ObjectHead {
            size,
            sha256: sha.map(str::to_owned),
        };
        assert_eq!(match_stored(&g, Some(&head(3, Some(A)))), Ok(()));
        assert_eq!(
            match_stored(&g, None).unwrap_err().code,
            "output_not_stored"
        );
        assert_eq!(
            match_stored(&g, Some(&head(3, Some(B)))).unwrap_err().code,
            OUTPUT_MISMATCH
        );
        assert_eq!(
            match_stored(&g, Some(&head(2, Some(A)))).unwrap_err().code,
            OUTPUT_MISMATCH
        );
        assert_eq!(
            match_stored(&g, Some(&head(3, None))).unwrap_err().code,
            OUTPUT_MISMATCH
        );
    }
}
