//! JSON rendering of a [`Report`]: the machine-readable form, and the input of `compare`.
//!
//! Pretty-printed with a trailing newline so that golden files diff line by line. Energy stays
//! integer µJ; every energy figure carries `low_uj`/`high_uj`.

use super::model::{Report, SCHEMA_VERSION};

/// Errors of reading or writing report JSON.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The text is not a report of this schema.
    #[error("not a joulebridge report")]
    Parse(#[source] serde_json::Error),
    /// The report was written by a newer, incompatible build.
    #[error("report schema version {found} is not supported (this build reads {SCHEMA_VERSION})")]
    UnsupportedSchema {
        /// Version found in the file.
        found: u32,
    },
}

/// The report as pretty JSON, ending in a newline.
#[must_use]
pub fn to_json(report: &Report) -> String {
    let mut text = serde_json::to_string_pretty(report)
        .expect("a Report always serializes (no maps with non-string keys)");
    text.push('\n');
    text
}

/// Parse a report written by [`to_json`].
///
/// # Errors
/// [`JsonError::Parse`] for anything that is not a report, [`JsonError::UnsupportedSchema`]
/// for a newer schema.
pub fn from_json(text: &str) -> Result<Report, JsonError> {
    #[derive(serde::Deserialize)]
    struct Peek {
        schema_version: u32,
    }
    let peek: Peek = serde_json::from_str(text).map_err(JsonError::Parse)?;
    if peek.schema_version != SCHEMA_VERSION {
        return Err(JsonError::UnsupportedSchema {
            found: peek.schema_version,
        });
    }
    serde_json::from_str(text).map_err(JsonError::Parse)
}
