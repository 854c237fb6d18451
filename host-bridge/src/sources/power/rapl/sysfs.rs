//! The powercap tree: discovering RAPL zones, choosing the split domain, reading counters.
//! Synchronous, over an injectable root (`/sys/class/powercap` in production, a temp dir in
//! tests).

use std::path::{Path, PathBuf};

use protocol::MicroJoules;

use super::{RaplError, ZONE_PREFIX};
use crate::sources::power::RaplAvailability;

/// One RAPL zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaplZone {
    /// Directory name (`intel-rapl:0:2`).
    pub id: String,
    /// The zone's `name` file (`package-0`, `core`, `dram`, `psys`).
    pub name: String,
    /// Unique label: top-level zones by name, subzones as `parent/name` (`package-0/dram`).
    pub label: String,
    /// Whether this is a top-level zone.
    pub top_level: bool,
    /// The zone directory.
    pub dir: PathBuf,
}

/// Which zones make up the split domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaplDomain {
    /// The platform zone.
    Psys,
    /// Every package plus every DRAM zone.
    PackagesAndDram,
    /// Every package (no DRAM zone).
    Packages,
}

impl RaplDomain {
    /// How the choice is shown and recorded.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::Psys => "psys",
            Self::PackagesAndDram => "sum of package and dram zones",
            Self::Packages => "sum of package zones (no dram zone)",
        }
    }
}

/// Counter values of every zone at one instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaplReading {
    /// `energy_uj` per zone, in [`RaplReader::zones`] order.
    pub energy: Vec<MicroJoules>,
    /// `max_energy_range_uj` per zone.
    pub range: Vec<MicroJoules>,
}

/// Maps an I/O error on `path` to a [`RaplError`], permission problems to their own variant.
#[must_use]
pub fn read_error(path: &Path, source: std::io::Error) -> RaplError {
    if source.kind() == std::io::ErrorKind::PermissionDenied {
        RaplError::PermissionDenied {
            path: path.to_owned(),
        }
    } else {
        RaplError::Read {
            path: path.to_owned(),
            source,
        }
    }
}

fn read_u64(path: &Path) -> Result<MicroJoules, RaplError> {
    let text = std::fs::read_to_string(path).map_err(|e| read_error(path, e))?;
    text.trim()
        .parse()
        .map(MicroJoules)
        .map_err(|_| RaplError::Parse {
            path: path.to_owned(),
            text: text.trim().to_owned(),
        })
}

/// Discovers RAPL zones and reads their counters.
#[derive(Clone, Debug)]
pub struct RaplReader {
    root: PathBuf,
    zones: Vec<RaplZone>,
    domain: RaplDomain,
}

impl RaplReader {
    /// Discovers the zones under `root` (normally [`DEFAULT_POWERCAP_ROOT`]) and reads them
    /// once, so an unreadable `energy_uj` fails here.
    ///
    /// # Errors
    /// [`RaplError::NoZones`], [`RaplError::PermissionDenied`], or a read/parse error.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, RaplError> {
        let root = root.into();
        let entries = std::fs::read_dir(&root).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => RaplError::NoZones { root: root.clone() },
            _ => RaplError::List {
                path: root.clone(),
                source,
            },
        })?;
        let mut ids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|n| {
                n.strip_prefix(ZONE_PREFIX)
                    .is_some_and(|rest| !rest.is_empty())
            })
            .collect();
        // Numeric order: intel-rapl:0, intel-rapl:0:0, intel-rapl:0:1, intel-rapl:1, …
        ids.sort_by_key(|id| {
            id[ZONE_PREFIX.len()..]
                .split(':')
                .map(|n| n.parse::<u32>().unwrap_or(u32::MAX))
                .collect::<Vec<_>>()
        });
        let mut zones: Vec<RaplZone> = Vec::new();
        for id in ids {
            let dir = root.join(&id);
            let name_path = dir.join("name");
            let name = std::fs::read_to_string(&name_path)
                .map_err(|e| read_error(&name_path, e))?
                .trim()
                .to_owned();
            let top_level = id[ZONE_PREFIX.len()..].split(':').count() == 1;
            let label = if top_level {
                name.clone()
            } else {
                let parent_id = id.rsplit_once(':').map(|(p, _)| p).unwrap_or_default();
                let parent = zones
                    .iter()
                    .find(|z| z.id == parent_id)
                    .map_or(parent_id, |z| z.name.as_str());
                format!("{parent}/{name}")
            };
            zones.push(RaplZone {
                id,
                name,
                label,
                top_level,
                dir,
            });
        }
        if zones.is_empty() {
            return Err(RaplError::NoZones { root });
        }
        let domain = if zones.iter().any(|z| z.top_level && z.name == "psys") {
            RaplDomain::Psys
        } else if zones.iter().any(|z| z.name == "dram") {
            RaplDomain::PackagesAndDram
        } else {
            RaplDomain::Packages
        };
        let reader = Self {
            root,
            zones,
            domain,
        };
        reader.read()?;
        Ok(reader)
    }

    /// The zones, in reading order.
    #[must_use]
    pub fn zones(&self) -> &[RaplZone] {
        &self.zones
    }

    /// The split domain.
    #[must_use]
    pub fn domain(&self) -> RaplDomain {
        self.domain
    }

    /// The powercap root.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads every zone's counter and range.
    ///
    /// # Errors
    /// [`RaplError`] when a file is unreadable or malformed.
    pub fn read(&self) -> Result<RaplReading, RaplError> {
        let mut energy = Vec::with_capacity(self.zones.len());
        let mut range = Vec::with_capacity(self.zones.len());
        for zone in &self.zones {
            energy.push(read_u64(&zone.dir.join("energy_uj"))?);
            range.push(read_u64(&zone.dir.join("max_energy_range_uj"))?);
        }
        Ok(RaplReading { energy, range })
    }

    /// Whether zone `i` belongs to the split domain.
    pub(super) fn in_domain(&self, zone: &RaplZone) -> bool {
        match self.domain {
            RaplDomain::Psys => zone.top_level && zone.name == "psys",
            RaplDomain::PackagesAndDram => {
                (zone.top_level && zone.name.starts_with("package")) || zone.name == "dram"
            }
            RaplDomain::Packages => zone.top_level && zone.name.starts_with("package"),
        }
    }
}

/// Probes RAPL for source selection.
#[must_use]
pub fn probe(root: &Path) -> RaplAvailability {
    match RaplReader::new(root) {
        Ok(_) => RaplAvailability::Readable,
        Err(RaplError::NoZones { .. }) => RaplAvailability::Absent,
        Err(err) => RaplAvailability::Unreadable(err.to_string()),
    }
}
