//! The file dead-letter sink: one JSON line per rejected record, with its reason and origin.
//!
//! The sink's length is committed in each checkpoint. On reopen, anything past the committed
//! length belongs to records that will be read again, so it is cut off: a dead letter is never
//! lost nor written twice.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use patron_core::decode::Rejection;
use serde::Serialize;

use crate::{Result, StreamError};

pub struct DeadLetterFile {
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
}

#[derive(Serialize)]
struct DeadLetter<'a> {
    reason: &'a str,
    detail: &'a str,
    source: &'a str,
    partition: u32,
    offset: u64,
    /// The record as text when it is valid UTF-8 (the usual case).
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<&'a str>,
    /// Otherwise its bytes, hex-encoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_hex: Option<String>,
}

impl DeadLetterFile {
    /// Opens for append, first truncating to `committed_len` (the length the store recorded).
    pub fn open(path: &Path, committed_len: u64) -> Result<Self> {
        let io = |e| StreamError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let actual = file.metadata().map_err(io)?.len();
        if actual > committed_len {
            file.set_len(committed_len).map_err(io)?;
        }
        let len = actual.min(committed_len);
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            len,
        })
    }

    pub fn key(&self) -> String {
        self.path.display().to_string()
    }

    pub fn write(
        &mut self,
        rejection: &Rejection,
        source: &str,
        partition: u32,
        offset: u64,
        raw: &[u8],
    ) -> Result<()> {
        let text = std::str::from_utf8(raw).ok();
        let letter = DeadLetter {
            reason: rejection.reason.code(),
            detail: &rejection.detail,
            source,
            partition,
            offset,
            raw: text,
            raw_hex: if text.is_none() {
                Some(raw.iter().map(|b| format!("{b:02x}")).collect())
            } else {
                None
            },
        };
        let mut line = serde_json::to_vec(&letter).expect("dead letter serialises");
        line.push(b'\n');
        self.out.write_all(&line).map_err(|e| StreamError::Io {
            path: self.path.clone(),
            source: e,
        })?;
        self.len += line.len() as u64;
        Ok(())
    }

    /// Flushes to the OS and returns the length to commit with the checkpoint.
    pub fn flush(&mut self) -> Result<u64> {
        self.out.flush().map_err(|e| StreamError::Io {
            path: self.path.clone(),
            source: e,
        })?;
        Ok(self.len)
    }
}
