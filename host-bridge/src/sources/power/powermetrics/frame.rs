//! Splits a powermetrics `-f plist` byte stream into documents.
//!
//! powermetrics separates documents with a NUL (`</plist>\n\0<?xml`). Whether the last
//! document is followed by a NUL varies (the 2014 Intel stream has one, recent captures cut at
//! kill time do not), so a document is complete when its buffered bytes end with `</plist>`
//! (it is emitted then, and stamped on that arrival, not one interval later when the next NUL
//! comes) or when a NUL follows it. A chunk without `</plist>` is incomplete: held while more
//! bytes may come, dropped and counted at EOF (docs/powermetrics.md §2; GMT #286). A chunk that grows past [`MAX_DOC_BYTES`]
//! without a NUL is dropped too, so a stream that never sends a NUL cannot exhaust memory.

use bytes::{Bytes, BytesMut};

/// Largest document accepted. Observed documents are 7–480 KB (docs/powermetrics.md §2); a machine
/// with many cores and `--show-all` stays well below this.
pub const MAX_DOC_BYTES: usize = 16 * 1024 * 1024;

/// Why bytes were dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// The stream ended inside a document.
    Incomplete {
        /// Bytes discarded.
        bytes: usize,
    },
    /// No NUL within [`MAX_DOC_BYTES`].
    Oversized {
        /// Bytes discarded.
        bytes: usize,
    },
}

/// What the framer yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole document (trimmed of surrounding whitespace).
    Doc(Bytes),
    /// Bytes that were dropped.
    Dropped(Dropped),
}

/// Streaming NUL framer. Feed bytes with [`DocFramer::push`], take frames with
/// [`DocFramer::next_frame`], and call [`DocFramer::finish`] at end of stream.
#[derive(Debug)]
pub struct DocFramer {
    buf: BytesMut,
    /// Bytes of `buf` already searched for a NUL (so each byte is scanned once).
    scanned: usize,
    /// Skipping an oversized document until its NUL.
    discarding: bool,
    max_doc: usize,
}

impl Default for DocFramer {
    fn default() -> Self {
        Self::new()
    }
}

impl DocFramer {
    /// A framer with the default document limit.
    #[must_use]
    pub fn new() -> Self {
        Self::with_limit(MAX_DOC_BYTES)
    }

    /// A framer with a custom document limit (tests).
    #[must_use]
    pub fn with_limit(max_doc: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(64 * 1024),
            scanned: 0,
            discarding: false,
            max_doc,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The buffered bytes not yet framed (the start of the next document).
    #[must_use]
    pub fn head(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes held for an unfinished document.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, if the buffered bytes hold one.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            let Some(offset) = self.buf[self.scanned..].iter().position(|&b| b == 0) else {
                self.scanned = self.buf.len();
                if !self.discarding && self.buf.len() > self.max_doc {
                    let bytes = self.buf.len();
                    self.buf.clear();
                    self.scanned = 0;
                    self.discarding = true;
                    return Some(Frame::Dropped(Dropped::Oversized { bytes }));
                }
                if self.discarding {
                    self.buf.clear();
                    self.scanned = 0;
                    return None;
                }
                // A document is complete when `</plist>` arrives: do not wait for the NUL,
                // which recent powermetrics writes only when the next document starts.
                if ends_with_plist_close(self.buf.trim_ascii_end()) {
                    let doc = trim(self.buf.split().freeze());
                    self.scanned = 0;
                    return Some(Frame::Doc(doc));
                }
                return None;
            };
            let nul = self.scanned + offset;
            let chunk = self.buf.split_to(nul + 1).freeze();
            self.scanned = 0;
            if std::mem::take(&mut self.discarding) {
                continue;
            }
            let doc = trim(chunk.slice(..nul));
            if !doc.is_empty() {
                return Some(Frame::Doc(doc));
            }
        }
    }

    /// End of stream: the last document when complete, else a drop report.
    pub fn finish(&mut self) -> Option<Frame> {
        let rest = trim(self.buf.split().freeze());
        self.scanned = 0;
        if std::mem::take(&mut self.discarding) || rest.is_empty() {
            return None;
        }
        if ends_with_plist_close(&rest) {
            Some(Frame::Doc(rest))
        } else {
            Some(Frame::Dropped(Dropped::Incomplete { bytes: rest.len() }))
        }
    }
}

fn trim(bytes: Bytes) -> Bytes {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    bytes.slice(start..end.max(start))
}

fn ends_with_plist_close(doc: &[u8]) -> bool {
    doc.ends_with(b"</plist>")
}

/// Splits a whole capture (a file) into frames: the documents and what was dropped.
#[must_use]
pub fn split_capture(bytes: &[u8]) -> Vec<Frame> {
    let mut framer = DocFramer::new();
    framer.push(bytes);
    let mut frames: Vec<Frame> = std::iter::from_fn(|| framer.next_frame()).collect();
    frames.extend(framer.finish());
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &[u8] = b"<?xml?><plist><dict></dict></plist>";

    fn docs(frames: &[Frame]) -> usize {
        frames.iter().filter(|f| matches!(f, Frame::Doc(_))).count()
    }

    #[test]
    fn framer_splits_on_nul_and_keeps_last_doc_without_nul() {
        let mut stream = Vec::new();
        for _ in 0..3 {
            stream.extend_from_slice(DOC);
            stream.extend_from_slice(b"\n\0");
        }
        stream.extend_from_slice(DOC);
        stream.push(b'\n');
        let frames = split_capture(&stream);
        assert_eq!(docs(&frames), 4);
        assert_eq!(frames[0], Frame::Doc(Bytes::from_static(DOC)));
    }

    #[test]
    fn framer_emits_on_plist_close_without_waiting_for_nul() {
        let mut framer = DocFramer::new();
        framer.push(DOC);
        framer.push(b"\n");
        assert_eq!(
            framer.next_frame(),
            Some(Frame::Doc(Bytes::from_static(DOC)))
        );
        framer.push(b"\0");
        framer.push(DOC);
        assert_eq!(
            framer.next_frame(),
            Some(Frame::Doc(Bytes::from_static(DOC)))
        );
        assert_eq!(framer.next_frame(), None);
        assert_eq!(framer.finish(), None);
    }

    #[test]
    fn framer_holds_partial_doc_across_pushes() {
        let mut framer = DocFramer::new();
        framer.push(&DOC[..10]);
        assert_eq!(framer.next_frame(), None);
        framer.push(&DOC[10..]);
        framer.push(b"\n\0");
        assert_eq!(
            framer.next_frame(),
            Some(Frame::Doc(Bytes::from_static(DOC)))
        );
        assert_eq!(framer.finish(), None);
    }

    #[test]
    fn framer_drops_and_counts_truncated_last_doc() {
        let mut stream = DOC.to_vec();
        stream.push(0);
        stream.extend_from_slice(&DOC[..20]);
        let frames = split_capture(&stream);
        assert_eq!(docs(&frames), 1);
        assert_eq!(
            frames.last(),
            Some(&Frame::Dropped(Dropped::Incomplete { bytes: 20 }))
        );
    }

    #[test]
    fn framer_drops_oversized_doc_and_resyncs() {
        let mut framer = DocFramer::with_limit(16);
        framer.push(&[b'x'; 40]);
        assert_eq!(
            framer.next_frame(),
            Some(Frame::Dropped(Dropped::Oversized { bytes: 40 }))
        );
        framer.push(b"more junk\0");
        framer.push(DOC);
        framer.push(b"\0");
        // The limit applies to the next document too, so use a doc below it.
        let mut small = DocFramer::with_limit(64);
        small.push(b"\0\0  \0");
        assert_eq!(small.next_frame(), None);
        assert_eq!(
            framer.next_frame(),
            Some(Frame::Doc(Bytes::from_static(DOC)))
        );
    }
}
