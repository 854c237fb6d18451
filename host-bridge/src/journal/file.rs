//! The recording file: everything the bridge received, in arrival order, so that `report`,
//! `replay` and re-attribution with another policy run the very same pipeline as a live bridge.
//!
//! Layout:
//!
//! ```text
//! MAGIC (16 bytes: "JOULEBRIDGE-REC\n")
//! frame: RecordingHeader            (format version, who wrote it)
//! frame: RecordEntry …              (appended; a restarted bridge appends a new Session)
//! ```
//!
//! A frame is the protocol's frame (4-byte big-endian length + bincode payload, see
//! `protocol::codec`). A crash can leave a torn last frame: [`RecordingReader`] reports it as
//! [`ReadRecording::torn_tail`] and [`RecordingWriter::open_append`] truncates it before appending, so
//! nothing that was acknowledged is ever lost and nothing half-written is ever read.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use protocol::codec::{self, CodecError};
use serde::Serialize;

use super::record::{MAGIC, RECORDING_VERSION, RecordEntry, RecordingHeader};

/// Errors of reading or writing recordings.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// Opening or creating the file failed.
    #[error("failed to open recording {path:?}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading, writing or syncing failed.
    #[error("I/O on recording {path:?} failed")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with [`MAGIC`].
    #[error("{path:?} is not a joulebridge recording (bad magic bytes)")]
    NotARecording {
        /// The file.
        path: PathBuf,
    },
    /// The header's version is newer than this build understands.
    #[error(
        "{path:?} has recording format version {found}; this build reads version {RECORDING_VERSION}"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Version found.
        found: u16,
    },
    /// A complete frame did not decode.
    #[error("corrupt frame at byte {offset} of {path:?}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Offset of the frame.
        offset: u64,
        /// Cause.
        #[source]
        source: CodecError,
    },
}

/// Appends entries to a recording. Writes are buffered; [`RecordingWriter::sync`] makes them
/// durable (the bridge acknowledges samples to agents only after a sync).
#[derive(Debug)]
pub struct RecordingWriter {
    path: PathBuf,
    out: BufWriter<File>,
    scratch: BytesMut,
}

impl RecordingWriter {
    /// Create a new recording, or open an existing one for appending after checking its header
    /// and cutting off a torn last frame. Returns the writer and the entries already in the file
    /// (a restarted bridge needs them to know what it had recorded).
    ///
    /// # Errors
    /// Open/read failures, a file that is not a recording, or a corrupt complete frame.
    pub fn open_append(path: &Path) -> Result<(Self, Vec<RecordEntry>), RecordingError> {
        let exists = path.exists()
            && std::fs::metadata(path)
                .map(|m| m.len() > 0)
                .unwrap_or(false);
        let io = |source| RecordingError::Io {
            path: path.to_path_buf(),
            source,
        };
        if exists {
            let read = RecordingReader::read_all(path)?;
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|source| RecordingError::Open {
                    path: path.to_path_buf(),
                    source,
                })?;
            file.set_len(read.valid_len).map_err(io)?;
            let mut file = file;
            file.seek(SeekFrom::End(0)).map_err(io)?;
            let writer = Self {
                path: path.to_path_buf(),
                out: BufWriter::new(file),
                scratch: BytesMut::new(),
            };
            return Ok((writer, read.entries));
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|source| RecordingError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let mut writer = Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            scratch: BytesMut::new(),
        };
        writer.out.write_all(MAGIC).map_err(io)?;
        let header = RecordingHeader {
            version: RECORDING_VERSION,
            created_by: env!("CARGO_PKG_VERSION").to_string(),
            created_unix_ns: crate::clock::unix_now(),
        };
        writer.write_value(&header)?;
        writer.sync()?;
        Ok((writer, Vec::new()))
    }

    /// Append one entry (buffered).
    ///
    /// # Errors
    /// Encoding or write failure.
    pub fn append(&mut self, entry: &RecordEntry) -> Result<(), RecordingError> {
        self.write_value(entry)
    }

    fn write_value<T: Serialize>(&mut self, value: &T) -> Result<(), RecordingError> {
        self.scratch.clear();
        codec::encode_frame(value, &mut self.scratch).map_err(|source| {
            RecordingError::Corrupt {
                path: self.path.clone(),
                offset: 0,
                source,
            }
        })?;
        self.out
            .write_all(&self.scratch)
            .map_err(|source| RecordingError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Flush buffers and `fdatasync`: everything appended so far survives a crash.
    ///
    /// # Errors
    /// Flush or sync failure.
    pub fn sync(&mut self) -> Result<(), RecordingError> {
        let io = |source| RecordingError::Io {
            path: self.path.clone(),
            source,
        };
        self.out.flush().map_err(io)?;
        self.out.get_ref().sync_data().map_err(io)
    }

    /// The file being written.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Result of reading a whole recording.
#[derive(Debug)]
pub struct ReadRecording {
    /// The header.
    pub header: RecordingHeader,
    /// Every complete entry, in file order.
    pub entries: Vec<RecordEntry>,
    /// Byte length of the valid prefix (everything before a torn last frame).
    pub valid_len: u64,
    /// Whether the file ended inside a frame (a crash while writing); that frame is ignored.
    pub torn_tail: bool,
}

/// Reads recordings.
#[derive(Debug)]
pub struct RecordingReader;

impl RecordingReader {
    /// Read a whole recording into memory.
    ///
    /// # Errors
    /// Open/read failures, bad magic, an unsupported version, or a corrupt complete frame.
    pub fn read_all(path: &Path) -> Result<ReadRecording, RecordingError> {
        let mut file = File::open(path).map_err(|source| RecordingError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|source| RecordingError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Self::parse(path, &bytes)
    }

    /// Parse recording bytes (`path` is only used in errors).
    ///
    /// # Errors
    /// As [`RecordingReader::read_all`].
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<ReadRecording, RecordingError> {
        let not_rec = || RecordingError::NotARecording {
            path: path.to_path_buf(),
        };
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(not_rec());
        }
        let mut buf = BytesMut::from(&bytes[MAGIC.len()..]);
        let total = bytes.len() as u64;
        let corrupt = |offset, source| RecordingError::Corrupt {
            path: path.to_path_buf(),
            offset,
            source,
        };
        let header_payload = codec::split_frame(&mut buf)
            .map_err(|e| corrupt(MAGIC.len() as u64, e))?
            .ok_or_else(not_rec)?;
        let peek: (u16, usize) = match codec::decode_prefix::<u16>(&header_payload) {
            Some(v) => v,
            None => return Err(not_rec()),
        };
        if peek.0 > RECORDING_VERSION {
            return Err(RecordingError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: peek.0,
            });
        }
        let header: RecordingHeader =
            codec::decode_payload(&header_payload).map_err(|e| corrupt(MAGIC.len() as u64, e))?;
        let mut entries = Vec::new();
        loop {
            let offset = total - buf.len() as u64;
            match codec::split_frame(&mut buf) {
                Ok(Some(payload)) => {
                    entries.push(codec::decode_payload(&payload).map_err(|e| corrupt(offset, e))?);
                }
                Ok(None) => {
                    return Ok(ReadRecording {
                        header,
                        entries,
                        valid_len: offset,
                        torn_tail: !buf.is_empty(),
                    });
                }
                Err(e) => return Err(corrupt(offset, e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Ack, Goodbye, Message, MonoNanos};

    fn guest(conn: u64, at: u64, message: Message) -> RecordEntry {
        RecordEntry::Guest {
            conn,
            at: MonoNanos(at),
            message,
        }
    }

    #[test]
    fn append_reopen_and_torn_tail_are_handled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rec.jbr");
        let (mut w, existing) = RecordingWriter::open_append(&path).unwrap();
        assert!(existing.is_empty());
        w.append(&guest(1, 10, Message::Ack(Ack { seq: 1 })))
            .unwrap();
        w.sync().unwrap();
        drop(w);

        // A crash mid-frame leaves a torn tail.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0, 0, 0, 9, 1, 2]).unwrap();
        drop(f);
        let read = RecordingReader::read_all(&path).unwrap();
        assert!(read.torn_tail);
        assert_eq!(read.entries.len(), 1);

        let (mut w, existing) = RecordingWriter::open_append(&path).unwrap();
        assert_eq!(existing.len(), 1);
        w.append(&guest(
            2,
            20,
            Message::Goodbye(Goodbye {
                reason: "bye".into(),
            }),
        ))
        .unwrap();
        w.sync().unwrap();
        let read = RecordingReader::read_all(&path).unwrap();
        assert!(!read.torn_tail);
        assert_eq!(read.entries.len(), 2);
        assert_eq!(
            read.entries[1],
            guest(
                2,
                20,
                Message::Goodbye(Goodbye {
                    reason: "bye".into()
                })
            )
        );
    }

    #[test]
    fn foreign_file_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"hello world, not a recording").unwrap();
        let err = RecordingReader::read_all(&path).unwrap_err();
        assert!(matches!(err, RecordingError::NotARecording { .. }), "{err}");
    }
}
