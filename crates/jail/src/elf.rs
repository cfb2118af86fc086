//! Just enough ELF to find a program's dynamic loader (its PT_INTERP), which must be executable
//! inside the jail.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The interpreter of an ELF64 little-endian executable, or `None` for a static one.
pub fn interpreter(program: &Path) -> io::Result<Option<PathBuf>> {
    let mut f = std::fs::File::open(program)?;
    let mut header = [0u8; 64];
    f.read_exact(&mut header)?;
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "not an ELF64 little-endian file",
        )
    };
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Err(bad());
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at =
        |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
    let u64_at =
        |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
    let phoff = u64_at(&header, 0x20);
    let phentsize = u16_at(&header, 0x36) as usize;
    let phnum = u16_at(&header, 0x38) as usize;
    if phentsize < 56 || phnum > 256 {
        return Err(bad());
    }
    let mut ph = vec![0u8; phentsize];
    for i in 0..phnum {
        f.seek(SeekFrom::Start(phoff + (i * phentsize) as u64))?;
        f.read_exact(&mut ph)?;
        if u32_at(&ph, 0) == 3 {
            let (off, size) = (u64_at(&ph, 8), u64_at(&ph, 32));
            if size == 0 || size > 4096 {
                return Err(bad());
            }
            let mut path = vec![0u8; size as usize];
            f.seek(SeekFrom::Start(off))?;
            f.read_exact(&mut path)?;
            let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
            let s = std::str::from_utf8(&path[..end]).map_err(|_| bad())?;
            return Ok(Some(PathBuf::from(s)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_loader_of_a_dynamic_program() {
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        let interp = super::interpreter(&sh)
            .unwrap()
            .expect("/bin/sh is dynamically linked");
        assert!(interp.to_string_lossy().contains("ld-linux"), "{interp:?}");
        assert!(super::interpreter(std::path::Path::new("/etc/passwd")).is_err());
    }
}
