//! A pull cursor over one plist document (quick-xml events over the borrowed bytes), generic
//! over what the caller wants from it: dictionaries walked key by key, scalars read as typed
//! values, and values the caller does not need skipped cheaply.
//!
//! Why not the `plist` crate: it builds the whole tree (~40 MB/s on the GMT capture) and its
//! serde path rejects duplicate keys (every Apple Silicon powermetrics document repeats its
//! `gpu.idle_*` keys). Skipped dictionaries and arrays, most of a powermetrics document, are
//! passed over by scanning the raw bytes for their matching end tag: no events, no allocation.
//! XML comments and stray non-XML lines between elements are tolerated (the caller collects
//! the lines). See docs/powermetrics.md for the quirks this has to live with.

use std::borrow::Cow;

use quick_xml::Reader;
use quick_xml::events::Event;
use quick_xml::name::QName;

/// A document that could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum PlistError {
    /// quick-xml rejected the bytes.
    #[error("malformed xml near byte {position}")]
    Xml {
        /// Byte offset in the document.
        position: u64,
        /// The XML error.
        #[source]
        source: quick_xml::Error,
    },
    /// The XML is well formed but not a plist of the expected shape.
    #[error("unexpected {found} where {expected} was expected")]
    Structure {
        /// What the parser needed.
        expected: &'static str,
        /// What it found.
        found: String,
    },
    /// A number that does not parse.
    #[error("invalid number {text:?} for key {key:?}")]
    Number {
        /// The key.
        key: String,
        /// The raw text.
        text: String,
    },
    /// The document ended before `</plist>`.
    #[error("document ends before </plist> (truncated)")]
    Truncated,
    /// `powermetrics -f text` output.
    #[error(
        "this is powermetrics text output, which is not supported; record or run powermetrics \
         with plist output (`--format plist`)"
    )]
    TextFormat,
}

pub(super) fn structure(expected: &'static str, found: &Tok<'_>) -> PlistError {
    PlistError::Structure {
        expected,
        found: found.describe(),
    }
}

/// Plist element names, classified once so the walker never compares names twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tag {
    Plist,
    Dict,
    Array,
    Key,
    String,
    Integer,
    Real,
    Date,
    Data,
    True,
    False,
    Other,
}

impl Tag {
    pub(super) fn of(name: QName<'_>) -> Self {
        match name.as_ref() {
            b"plist" => Self::Plist,
            b"dict" => Self::Dict,
            b"array" => Self::Array,
            b"key" => Self::Key,
            b"string" => Self::String,
            b"integer" => Self::Integer,
            b"real" => Self::Real,
            b"date" => Self::Date,
            b"data" => Self::Data,
            b"true" => Self::True,
            b"false" => Self::False,
            _ => Self::Other,
        }
    }
}

/// A structural token.
#[derive(Debug)]
pub(super) enum Tok<'a> {
    Open(Tag),
    /// Start of an element the parser does not know, with its raw name for skipping.
    OpenOther(Cow<'a, [u8]>),
    Close(Tag),
    Empty(Tag),
    Eof,
}

impl Tok<'_> {
    pub(super) fn describe(&self) -> String {
        match self {
            Self::Open(tag) => format!("<{tag:?}>"),
            Self::OpenOther(name) => format!("<{}>", String::from_utf8_lossy(name)),
            Self::Close(tag) => format!("</{tag:?}>"),
            Self::Empty(tag) => format!("<{tag:?}/>"),
            Self::Eof => "end of document".to_owned(),
        }
    }
}

/// A scalar value: its element and raw text.
pub(super) type Scalar<'a> = (Tag, Cow<'a, [u8]>);

/// The event walker over one borrowed document.
pub(super) struct Cursor<'a> {
    reader: Reader<&'a [u8]>,
    /// Stray non-XML lines met between elements, in order.
    pub(super) stray: Vec<String>,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(doc: &'a [u8]) -> Self {
        let mut reader = Reader::from_reader(doc);
        reader.config_mut().trim_text(true);
        Self {
            reader,
            stray: Vec::new(),
        }
    }

    pub(super) fn event(&mut self) -> Result<Event<'a>, PlistError> {
        self.reader.read_event().map_err(|source| PlistError::Xml {
            position: self.reader.error_position(),
            source,
        })
    }

    /// The next element boundary; text between elements is a stray line and is collected.
    pub(super) fn next_tok(&mut self) -> Result<Tok<'a>, PlistError> {
        loop {
            match self.event()? {
                Event::Start(e) => {
                    let tag = Tag::of(e.name());
                    return Ok(if tag == Tag::Other {
                        Tok::OpenOther(Cow::Owned(e.name().as_ref().to_vec()))
                    } else {
                        Tok::Open(tag)
                    });
                }
                Event::End(e) => return Ok(Tok::Close(Tag::of(e.name()))),
                Event::Empty(e) => return Ok(Tok::Empty(Tag::of(e.name()))),
                Event::Text(text) => {
                    let raw = text.into_inner();
                    for line in String::from_utf8_lossy(&raw).lines() {
                        let line = line.trim();
                        if !line.is_empty() {
                            self.stray.push(line.to_owned());
                        }
                    }
                }
                Event::CData(_)
                | Event::Comment(_)
                | Event::Decl(_)
                | Event::PI(_)
                | Event::DocType(_) => {}
                Event::Eof => return Ok(Tok::Eof),
            }
        }
    }

    /// Text content of the element just opened, consuming its end tag.
    pub(super) fn text(&mut self) -> Result<Cow<'a, [u8]>, PlistError> {
        let mut content: Cow<'a, [u8]> = Cow::Borrowed(b"");
        loop {
            match self.event()? {
                Event::Text(text) => content = text.into_inner(),
                Event::CData(data) => content = data.into_inner(),
                Event::Comment(_) => {}
                Event::End(_) => return Ok(content),
                Event::Eof => return Err(PlistError::Truncated),
                other => {
                    return Err(PlistError::Structure {
                        expected: "text",
                        found: format!("{other:?}"),
                    });
                }
            }
        }
    }

    /// Walks a dict whose `<dict>` was just consumed; `entry` must consume exactly one value.
    pub(super) fn dict(
        &mut self,
        mut entry: impl FnMut(&mut Self, &[u8]) -> Result<(), PlistError>,
    ) -> Result<(), PlistError> {
        loop {
            match self.next_tok()? {
                Tok::Close(Tag::Dict) => return Ok(()),
                Tok::Open(Tag::Key) => {
                    let key = self.text()?;
                    entry(self, &key)?;
                }
                Tok::Empty(Tag::Key) => entry(self, b"")?,
                Tok::Eof => return Err(PlistError::Truncated),
                other => return Err(structure("<key> or </dict>", &other)),
            }
        }
    }

    /// Walks a dict value (or skips a value that is not a dict).
    pub(super) fn dict_value(
        &mut self,
        entry: impl FnMut(&mut Self, &[u8]) -> Result<(), PlistError>,
    ) -> Result<(), PlistError> {
        match self.next_tok()? {
            Tok::Open(Tag::Dict) => self.dict(entry),
            Tok::Eof => Err(PlistError::Truncated),
            other => self.skip_opened(other),
        }
    }

    /// Walks an array value, calling `item` for each dict element; other elements are skipped.
    pub(super) fn array_of_dicts(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<(), PlistError>,
    ) -> Result<(), PlistError> {
        match self.next_tok()? {
            Tok::Open(Tag::Array) => {}
            Tok::Eof => return Err(PlistError::Truncated),
            other => return self.skip_opened(other),
        }
        loop {
            match self.next_tok()? {
                Tok::Close(Tag::Array) => return Ok(()),
                Tok::Open(Tag::Dict) => item(self)?,
                Tok::Eof => return Err(PlistError::Truncated),
                other => self.skip_opened(other)?,
            }
        }
    }

    /// Skips the next value, whatever it is.
    pub(super) fn skip_value(&mut self) -> Result<(), PlistError> {
        let tok = self.next_tok()?;
        self.skip_opened(tok)
    }

    /// Skips the rest of a value whose first token was already read.
    pub(super) fn skip_opened(&mut self, tok: Tok<'a>) -> Result<(), PlistError> {
        let name: &[u8] = match &tok {
            Tok::Empty(_) => return Ok(()),
            Tok::Eof => return Err(PlistError::Truncated),
            Tok::Close(_) => return Err(structure("a value", &tok)),
            Tok::OpenOther(name) => name,
            // Scalars are one text event and their end tag.
            Tok::Open(
                Tag::Key | Tag::String | Tag::Integer | Tag::Real | Tag::Date | Tag::Data,
            ) => return self.text().map(|_| ()),
            Tok::Open(tag) => tag_name(*tag),
        };
        self.skip_to_end_tag(name)?;
        // The reader now stands on the matching end tag; let it consume that tag so its
        // open-element stack stays balanced.
        match self.event()? {
            Event::End(_) => Ok(()),
            other => Err(PlistError::Structure {
                expected: "end tag",
                found: format!("{other:?}"),
            }),
        }
    }

    /// Moves the reader to the `</name>` that closes the element just opened, without
    /// producing events for its content (the hot path: most of a document is skipped).
    ///
    /// Nesting of the same name is counted; comments and CDATA are stepped over. Error
    /// positions reported after a skip are relative to where quick-xml last read.
    pub(super) fn skip_to_end_tag(&mut self, name: &[u8]) -> Result<(), PlistError> {
        let rest: &'a [u8] = self.reader.get_ref();
        let mut depth = 0usize;
        let mut i = 0;
        while let Some(offset) = rest[i..].iter().position(|&b| b == b'<') {
            let at = i + offset;
            let tail = &rest[at + 1..];
            if tail.starts_with(b"!--") {
                i = find(rest, at, b"-->").ok_or(PlistError::Truncated)? + 3;
                continue;
            }
            if tail.starts_with(b"![CDATA[") {
                i = find(rest, at, b"]]>").ok_or(PlistError::Truncated)? + 3;
                continue;
            }
            if let Some(end_name) = tail.strip_prefix(b"/") {
                if names_tag(end_name, name) {
                    if depth == 0 {
                        *self.reader.get_mut() = &rest[at..];
                        return Ok(());
                    }
                    depth -= 1;
                }
            } else if names_tag(tail, name) {
                let close = find(rest, at, b">").ok_or(PlistError::Truncated)?;
                if rest[close - 1] != b'/' {
                    depth += 1;
                }
            }
            i = at + 1;
        }
        Err(PlistError::Truncated)
    }

    /// The raw text of a scalar value, or `None` (after skipping) when the value is not one of
    /// `accepted`.
    pub(super) fn scalar(&mut self, accepted: &[Tag]) -> Result<Option<Scalar<'a>>, PlistError> {
        match self.next_tok()? {
            Tok::Open(tag) if accepted.contains(&tag) => Ok(Some((tag, self.text()?))),
            Tok::Empty(tag) if accepted.contains(&tag) => Ok(Some((tag, Cow::Borrowed(b"")))),
            Tok::Eof => Err(PlistError::Truncated),
            other => self.skip_opened(other).map(|()| None),
        }
    }

    pub(super) fn bool_value(&mut self) -> Result<Option<bool>, PlistError> {
        match self.next_tok()? {
            Tok::Empty(Tag::True) => Ok(Some(true)),
            Tok::Empty(Tag::False) => Ok(Some(false)),
            Tok::Eof => Err(PlistError::Truncated),
            other => self.skip_opened(other).map(|()| None),
        }
    }

    pub(super) fn string_value(&mut self) -> Result<Option<String>, PlistError> {
        let Some((_, raw)) = self.scalar(&[Tag::String])? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&raw);
        // A name with a bare `&` is not valid XML; keep it raw rather than reject the document.
        Ok(Some(match quick_xml::escape::unescape(&text) {
            Ok(unescaped) => unescaped.into_owned(),
            Err(_) => text.into_owned(),
        }))
    }

    pub(super) fn f64_value(&mut self, key: &[u8]) -> Result<Option<f64>, PlistError> {
        let Some((_, raw)) = self.scalar(&[Tag::Integer, Tag::Real])? else {
            return Ok(None);
        };
        parse_number::<f64>(key, &raw).map(Some)
    }

    pub(super) fn i64_value(&mut self, key: &[u8]) -> Result<Option<i64>, PlistError> {
        let Some((tag, raw)) = self.scalar(&[Tag::Integer, Tag::Real])? else {
            return Ok(None);
        };
        if tag == Tag::Integer {
            return parse_number::<i64>(key, &raw).map(Some);
        }
        let value = parse_number::<f64>(key, &raw)?;
        Ok(super::super::round_to_u64(value.abs())
            .and_then(|v| i64::try_from(v).ok())
            .map(|v| if value < 0.0 { -v } else { v }))
    }

    pub(super) fn u64_value(&mut self, key: &[u8]) -> Result<Option<u64>, PlistError> {
        let Some((tag, raw)) = self.scalar(&[Tag::Integer, Tag::Real])? else {
            return Ok(None);
        };
        if tag == Tag::Integer {
            // Negative counters (never seen, but not excluded by the format) read as absent.
            return Ok(u64::try_from(parse_number::<i128>(key, &raw)?).ok());
        }
        Ok(super::super::round_to_u64(parse_number::<f64>(key, &raw)?))
    }
}

fn tag_name(tag: Tag) -> &'static [u8] {
    match tag {
        Tag::Plist => b"plist",
        Tag::Dict => b"dict",
        Tag::Array => b"array",
        Tag::Key => b"key",
        Tag::String => b"string",
        Tag::Integer => b"integer",
        Tag::Real => b"real",
        Tag::Date => b"date",
        Tag::Data => b"data",
        Tag::True => b"true",
        Tag::False => b"false",
        // Unknown names travel as `Tok::OpenOther` with their own bytes.
        Tag::Other => b"",
    }
}

/// Whether `tail` (the bytes after `<` or `</`) starts with the element name `name`.
fn names_tag(tail: &[u8], name: &[u8]) -> bool {
    tail.starts_with(name)
        && matches!(
            tail.get(name.len()),
            Some(b'>' | b'/' | b' ' | b'\t' | b'\r' | b'\n')
        )
}

/// Position of `needle` in `haystack` at or after `from`.
fn find(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

fn parse_number<T: std::str::FromStr>(key: &[u8], raw: &[u8]) -> Result<T, PlistError> {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.trim().parse::<T>().ok())
        .ok_or_else(|| PlistError::Number {
            key: String::from_utf8_lossy(key).into_owned(),
            text: String::from_utf8_lossy(raw).into_owned(),
        })
}
