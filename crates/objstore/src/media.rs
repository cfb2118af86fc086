//! What the store may say about a tenant's bytes when it serves them: a content type from a
//! safe list (never one a browser would run: HTML, SVG, XML, JavaScript…) and an attachment
//! disposition. Both are signed into every upload and download URL, so neither the uploader nor
//! a third-party store's defaults decide how a browser treats the bytes.

/// Served for anything that is not on the safe list.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// The largest object one PUT may carry (AWS S3's single-PUT limit; multipart is not offered).
pub const SINGLE_PUT_LIMIT: u64 = 5 * 1024 * 1024 * 1024;

/// Media types that no browser renders as an active document. Compared case-insensitively,
/// without parameters.
const SAFE: &[&str] = &[
    "application/octet-stream",
    "application/x-mpegurl",
    "application/vnd.apple.mpegurl",
    "application/dash+xml",
    "application/x-subrip",
    "application/mp4",
    "application/ogg",
    "application/mxf",
    "text/vtt",
    "image/png",
    "image/jpeg",
    "image/webp",
    "image/gif",
    "image/bmp",
    "image/tiff",
    "image/avif",
];

/// Prefixes whose every subtype is inert media.
const SAFE_FAMILIES: &[&str] = &["video/", "audio/"];

/// The content type to sign in for a declared one: the declared type, lowercased and without
/// parameters, when it is on the safe list; otherwise `application/octet-stream`.
pub fn safe_content_type(declared: Option<&str>) -> String {
    let Some(declared) = declared else {
        return OCTET_STREAM.to_owned();
    };
    let essence = declared
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 100
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let well_formed = essence
        .split_once('/')
        .is_some_and(|(t, s)| token(t) && token(s));
    // `video/…+xml` and the like are still XML to a browser.
    let safe = SAFE.contains(&essence.as_str())
        || SAFE_FAMILIES.iter().any(|f| essence.starts_with(f)) && !essence.contains("xml");
    if well_formed && safe {
        essence
    } else {
        OCTET_STREAM.to_owned()
    }
}

/// A safe content type guessed from a file name's extension (for outputs, whose type nobody
/// declared).
pub fn content_type_for_filename(filename: &str) -> &'static str {
    let ext = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "mp4" | "m4v" => "video/mp4",
        "mov" => "video/quicktime",
        "mkv" => "video/x-matroska",
        "webm" => "video/webm",
        "ts" => "video/mp2t",
        "m4s" => "video/iso.segment",
        "avi" => "video/x-msvideo",
        "flv" => "video/x-flv",
        "m4a" => "audio/mp4",
        "mp3" => "audio/mpeg",
        "aac" => "audio/aac",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "ogg" | "oga" => "audio/ogg",
        "opus" => "audio/opus",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "m3u8" => "application/x-mpegURL",
        "mpd" => "application/dash+xml",
        "vtt" => "text/vtt",
        "srt" => "application/x-subrip",
        _ => OCTET_STREAM,
    }
}

/// `attachment` with the file name: an ASCII fallback (anything outside printable ASCII, and
/// quotes and backslashes, become `_`) and the exact name as RFC 5987 `filename*`.
pub fn attachment_disposition(filename: &str) -> String {
    let fallback: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in filename.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_inert_types_pass() {
        for (declared, want) in [
            (None, OCTET_STREAM),
            (Some("video/mp4"), "video/mp4"),
            (Some("Video/MP4; codecs=avc1"), "video/mp4"),
            (Some("audio/x-wav"), "audio/x-wav"),
            (Some("image/png"), "image/png"),
            (Some("application/x-mpegURL"), "application/x-mpegurl"),
            (Some("application/dash+xml"), "application/dash+xml"),
            (Some("text/vtt"), "text/vtt"),
            (Some("text/html"), OCTET_STREAM),
            (Some("text/html; charset=utf-8"), OCTET_STREAM),
            (Some("image/svg+xml"), OCTET_STREAM),
            (Some("application/xhtml+xml"), OCTET_STREAM),
            (Some("application/xml"), OCTET_STREAM),
            (Some("text/xml"), OCTET_STREAM),
            (Some("video/x+xml"), OCTET_STREAM),
            (Some("application/javascript"), OCTET_STREAM),
            (Some("application/pdf"), OCTET_STREAM),
            (Some("text/plain"), OCTET_STREAM),
            (Some("video/"), OCTET_STREAM),
            (Some("video/mp4\0"), OCTET_STREAM),
            (Some("video/mp4\r\nx: y"), OCTET_STREAM),
            (Some(""), OCTET_STREAM),
            (Some("*/*"), OCTET_STREAM),
        ] {
            assert_eq!(safe_content_type(declared), want, "{declared:?}");
        }
    }

    #[test]
    fn guessed_types_are_safe() {
        for name in ["a.mp4", "b.M3U8", "c.mpd", "d.html", "e.svg", "f", "g.vtt"] {
            let t = content_type_for_filename(name);
            assert_eq!(safe_content_type(Some(t)), t.to_ascii_lowercase(), "{name}");
        }
        assert_eq!(content_type_for_filename("x.html"), OCTET_STREAM);
        assert_eq!(content_type_for_filename("x.svg"), OCTET_STREAM);
    }

    #[test]
    fn disposition_cannot_be_broken_out_of() {
        assert_eq!(
            attachment_disposition("out.mp4"),
            "attachment; filename=\"out.mp4\"; filename*=UTF-8''out.mp4"
        );
        let d = attachment_disposition("a\"; filename=x.html\r\n\\é.mp4");
        assert!(
            d.starts_with("attachment; filename=\"a_; filename=x.html___"),
            "{d}"
        );
        assert!(d.contains("filename*=UTF-8''a%22%3B%20filename%3Dx.html%0D%0A%5C%C3%A9.mp4"));
        assert!(d.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
    }
}
