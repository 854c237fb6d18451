//! The powermetrics schema: which keys of one plist document the bridge reads, and into what.
//! The walk over the XML is [`super::plist`]'s cursor; this module only says what to keep.
//!
//! Why not the `plist` crate: it builds the whole tree (~40 MB/s on the GMT capture) and its
//! serde path rejects the duplicate `gpu.idle_*` keys every Apple Silicon capture has. This
//! parser walks quick-xml events over the borrowed document and keeps only the keys the bridge
//! needs. Unneeded scalars are consumed as one text event; unneeded dicts and arrays (most of a
//! document: DVFS states, timer wakeups, interrupts) are skipped by scanning the raw bytes for
//! their matching end tag, which produces no events and allocates nothing.
//!
//! Tolerated (docs/powermetrics.md §2, §4): duplicate keys (the last value wins), XML comments,
//! stray non-XML lines between elements (powermetrics diagnostics such as `warning: time went
//! backwards…`; they are collected in [`PowermetricsDoc::stray_lines`]), integers of any size,
//! samplers that are absent, unknown keys. Refused: text-format output
//! ([`PlistError::TextFormat`]) and documents cut off before `</plist>`.
//!
//! Units are kept as reported: Apple Silicon `*_energy` mJ / `*_power` mW, Intel `*_joules` J /
//! `*_watts` W (converted here to mJ / mW so every [`EnergyReading`] has one unit).

pub use super::plist::PlistError;
use super::plist::{Cursor, Tag, Tok, structure};

/// Energy keys of one domain, as reported (`cpu`, `gpu`, `ane`, `combined`, `package`, …).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EnergyReading {
    /// Domain name: the key without its unit suffix (`cpu_power` → `cpu`).
    pub name: String,
    /// Average power over the window in mW (Intel `*_watts` converted).
    pub power_mw: Option<f64>,
    /// Energy over the window in mJ as reported (Apple Silicon: integer mJ; Intel `*_joules`
    /// converted).
    pub reported_mj: Option<f64>,
    /// Reported in base units (`*_joules`/`*_watts`, Intel) rather than milli units.
    pub base_units: bool,
}

/// One CPU cluster (Apple Silicon); names vary by chip and OS, so they are kept as strings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterReading {
    /// `E-Cluster`, `P0-Cluster`, `M0-Cluster`, …
    pub name: String,
    /// Cluster power in mW, where the OS reports it (macOS 11/12).
    pub power_mw: Option<f64>,
    /// Cluster energy in mJ, where the OS reports it.
    pub reported_mj: Option<f64>,
    /// CPUs listed in the cluster.
    pub cpus: u32,
}

/// One task (process) of the `tasks` sampler.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskStats {
    /// Process id (`-1` dead tasks, `-2` all tasks).
    pub pid: Option<i64>,
    /// Process name (truncated to 16 bytes on OS X 10.9).
    pub name: String,
    /// CPU time in the window.
    pub cputime_ns: Option<u64>,
    /// Apple "energy impact" in the window (a weighted score, not energy).
    pub energy_impact: Option<f64>,
    /// Index into [`PowermetricsDoc::coalitions`] when listed inside a coalition.
    pub coalition: Option<usize>,
}

/// One coalition (`--show-process-coalition`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CoalitionStats {
    /// Coalition id; absent for `DEAD_TASKS_COALITION`.
    pub id: Option<i64>,
    /// Coalition name (`com.docker.docker`).
    pub name: String,
    /// CPU time of the coalition in the window.
    pub cputime_ns: Option<u64>,
    /// Energy impact of the coalition.
    pub energy_impact: Option<f64>,
}

/// The keys of one document the bridge uses; every field is optional because keys come and go
/// with chip, OS and sampler list.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PowermetricsDoc {
    /// `true` for periodic samples, `false` for cumulative ones (usage summary).
    pub is_delta: Option<bool>,
    /// True window length.
    pub elapsed_ns: Option<u64>,
    /// `hw_model`.
    pub hw_model: Option<String>,
    /// `kern_osversion` (build, e.g. `23H311`).
    pub kern_osversion: Option<String>,
    /// Whether a `processor` dict was present.
    pub has_processor: bool,
    /// Energy keys of the `processor` dict.
    pub readings: Vec<EnergyReading>,
    /// Apple Silicon clusters.
    pub clusters: Vec<ClusterReading>,
    /// `gpu.gpu_energy` (mJ), the only GPU energy of a `gpu_power`-only document.
    pub gpu_dict_energy_mj: Option<f64>,
    /// Tasks, top-level and inside coalitions.
    pub tasks: Vec<TaskStats>,
    /// Coalitions.
    pub coalitions: Vec<CoalitionStats>,
    /// The `ALL_TASKS` pseudo-task (denominator of CPU shares).
    pub all_tasks: Option<TaskStats>,
    /// Non-XML lines found between elements, dropped from the parse.
    pub stray_lines: Vec<String>,
}

impl PowermetricsDoc {
    /// The reading for one domain name.
    #[must_use]
    pub fn reading(&self, name: &str) -> Option<&EnergyReading> {
        self.readings.iter().find(|r| r.name == name)
    }

    /// CPUs counted in the clusters, if any.
    #[must_use]
    pub fn online_cpus(&self) -> Option<u32> {
        let n: u32 = self.clusters.iter().map(|c| c.cpus).sum();
        (n > 0).then_some(n)
    }

    fn reading_mut(&mut self, name: &[u8], base_units: bool) -> &mut EnergyReading {
        let name = String::from_utf8_lossy(name);
        let index = match self.readings.iter().position(|r| r.name == name) {
            Some(i) => i,
            None => {
                self.readings.push(EnergyReading {
                    name: name.into_owned(),
                    base_units,
                    ..EnergyReading::default()
                });
                self.readings.len() - 1
            }
        };
        let reading = &mut self.readings[index];
        reading.base_units |= base_units;
        reading
    }
}

/// Parses one document (the bytes between two NULs).
///
/// # Errors
/// [`PlistError`] when the bytes are not a complete powermetrics plist document.
pub fn parse_document(doc: &[u8]) -> Result<PowermetricsDoc, PlistError> {
    if looks_like_text_format(doc) {
        return Err(PlistError::TextFormat);
    }
    let mut cursor = Cursor::new(doc);
    let mut out = PowermetricsDoc::default();
    match cursor.next_tok()? {
        Tok::Open(Tag::Plist) => {}
        Tok::Eof => return Err(PlistError::Truncated),
        other => return Err(structure("<plist>", &other)),
    }
    match cursor.next_tok()? {
        Tok::Open(Tag::Dict) => cursor.dict(|c, key| root_entry(c, key, &mut out))?,
        Tok::Empty(Tag::Dict) => {}
        Tok::Eof => return Err(PlistError::Truncated),
        other => return Err(structure("root <dict>", &other)),
    }
    match cursor.next_tok()? {
        Tok::Close(Tag::Plist) => {}
        Tok::Eof => return Err(PlistError::Truncated),
        other => return Err(structure("</plist>", &other)),
    }
    out.stray_lines = cursor.stray;
    Ok(out)
}

/// Whether `doc` is text output: `powermetrics -f text` starts with `Machine model:` and has `*** Sampled system activity`
/// headers; a plist starts with `<` (after optional stray lines).
#[must_use]
pub fn looks_like_text_format(doc: &[u8]) -> bool {
    let start = doc
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(doc.len());
    let head = &doc[start..];
    if head.first() == Some(&b'<') {
        return false;
    }
    head.starts_with(b"Machine model:") || contains(head, b"*** Sampled system activity")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn root_entry(c: &mut Cursor<'_>, key: &[u8], out: &mut PowermetricsDoc) -> Result<(), PlistError> {
    match key {
        b"is_delta" => out.is_delta = c.bool_value()?,
        b"elapsed_ns" => out.elapsed_ns = c.u64_value(key)?,
        b"hw_model" => out.hw_model = c.string_value()?,
        b"kern_osversion" => out.kern_osversion = c.string_value()?,
        b"processor" => {
            out.has_processor = true;
            c.dict_value(|c, key| processor_entry(c, key, out))?;
        }
        b"gpu" => c.dict_value(|c, key| {
            if key == b"gpu_energy" {
                out.gpu_dict_energy_mj = c.f64_value(key)?;
                Ok(())
            } else {
                c.skip_value()
            }
        })?,
        b"tasks" => c.array_of_dicts(|c| {
            let task = task_dict(c, None)?;
            out.tasks.push(task);
            Ok(())
        })?,
        b"coalitions" => c.array_of_dicts(|c| coalition_dict(c, out))?,
        b"all_tasks" => {
            let mut task = TaskStats::default();
            c.dict_value(|c, key| task_entry(c, key, &mut task))?;
            out.all_tasks = Some(task);
        }
        _ => c.skip_value()?,
    }
    Ok(())
}

fn processor_entry(
    c: &mut Cursor<'_>,
    key: &[u8],
    out: &mut PowermetricsDoc,
) -> Result<(), PlistError> {
    if key == b"clusters" {
        return c.array_of_dicts(|c| {
            let mut cluster = ClusterReading::default();
            c.dict(|c, key| cluster_entry(c, key, &mut cluster))?;
            out.clusters.push(cluster);
            Ok(())
        });
    }
    // Apple Silicon: `<d>_energy` (mJ), `<d>_power` (mW); Intel: `<d>_joules`, `<d>_watts`.
    let (domain, scale, is_power, base) = if let Some(d) = key.strip_suffix(b"_energy") {
        (d, 1.0, false, false)
    } else if let Some(d) = key.strip_suffix(b"_power") {
        (d, 1.0, true, false)
    } else if let Some(d) = key.strip_suffix(b"_joules") {
        (d, 1e3, false, true)
    } else if let Some(d) = key.strip_suffix(b"_watts") {
        (d, 1e3, true, true)
    } else {
        return c.skip_value();
    };
    if let Some(value) = c.f64_value(key)? {
        let reading = out.reading_mut(domain, base);
        if is_power {
            reading.power_mw = Some(value * scale);
        } else {
            reading.reported_mj = Some(value * scale);
        }
    }
    Ok(())
}

fn cluster_entry(
    c: &mut Cursor<'_>,
    key: &[u8],
    cluster: &mut ClusterReading,
) -> Result<(), PlistError> {
    match key {
        b"name" => cluster.name = c.string_value()?.unwrap_or_default(),
        b"power" => cluster.power_mw = c.f64_value(key)?,
        b"energy" => cluster.reported_mj = c.f64_value(key)?,
        b"cpus" => c.array_of_dicts(|c| {
            cluster.cpus += 1;
            c.dict(|c, _| c.skip_value())
        })?,
        _ => c.skip_value()?,
    }
    Ok(())
}

fn task_entry(c: &mut Cursor<'_>, key: &[u8], task: &mut TaskStats) -> Result<(), PlistError> {
    match key {
        b"pid" => task.pid = c.i64_value(key)?,
        b"name" => task.name = c.string_value()?.unwrap_or_default(),
        b"cputime_ns" => task.cputime_ns = c.u64_value(key)?,
        b"energy_impact" => task.energy_impact = c.f64_value(key)?,
        _ => c.skip_value()?,
    }
    Ok(())
}

fn task_dict(c: &mut Cursor<'_>, coalition: Option<usize>) -> Result<TaskStats, PlistError> {
    let mut task = TaskStats {
        coalition,
        ..TaskStats::default()
    };
    c.dict(|c, key| task_entry(c, key, &mut task))?;
    Ok(task)
}

fn coalition_dict(c: &mut Cursor<'_>, out: &mut PowermetricsDoc) -> Result<(), PlistError> {
    let index = out.coalitions.len();
    let mut coalition = CoalitionStats::default();
    c.dict(|c, key| match key {
        b"id" => {
            coalition.id = c.i64_value(key)?;
            Ok(())
        }
        b"name" => {
            coalition.name = c.string_value()?.unwrap_or_default();
            Ok(())
        }
        b"cputime_ns" => {
            coalition.cputime_ns = c.u64_value(key)?;
            Ok(())
        }
        b"energy_impact" => {
            coalition.energy_impact = c.f64_value(key)?;
            Ok(())
        }
        b"tasks" => c.array_of_dicts(|c| {
            let task = task_dict(c, Some(index))?;
            out.tasks.push(task);
            Ok(())
        }),
        _ => c.skip_value(),
    })?;
    out.coalitions.push(coalition);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
"#;

    fn doc(body: &str) -> String {
        format!("{HEAD}{body}</dict>\n</plist>\n")
    }

    #[test]
    fn parse_apple_silicon_energy_keys() {
        let text = doc(r"<key>is_delta</key><true/>
<key>elapsed_ns</key><integer>1000000000</integer>
<key>processor</key><dict>
<key>clusters</key><array>
<dict><key>name</key><string>S-Cluster</string><key>power</key><real>12.5</real>
<key>cpus</key><array><dict><key>cpu</key><integer>0</integer></dict><dict><key>cpu</key><integer>1</integer></dict></array></dict>
</array>
<key>cpu_energy</key><integer>70000</integer>
<key>cpu_power</key><real>70000.4</real>
<key>cpu_power_zones_engaged</key><real>0.5</real>
</dict>");
        let parsed = parse_document(text.as_bytes()).expect("valid document");
        assert_eq!(parsed.is_delta, Some(true));
        assert_eq!(parsed.elapsed_ns, Some(1_000_000_000));
        let cpu = parsed.reading("cpu").expect("cpu reading");
        assert_eq!(cpu.reported_mj, Some(70_000.0));
        assert_eq!(cpu.power_mw, Some(70_000.4));
        assert!(!cpu.base_units);
        assert!(parsed.reading("cpu_power_zones_engaged").is_none());
        assert_eq!(parsed.clusters.len(), 1);
        assert_eq!(parsed.clusters[0].name, "S-Cluster");
        assert_eq!(parsed.clusters[0].power_mw, Some(12.5));
        assert_eq!(parsed.online_cpus(), Some(2));
    }

    #[test]
    fn parse_duplicate_key_keeps_last() {
        let text = doc(r"<key>elapsed_ns</key><integer>5</integer>
<key>elapsed_ns</key><integer>7</integer>");
        let parsed = parse_document(text.as_bytes()).expect("valid document");
        assert_eq!(parsed.elapsed_ns, Some(7));
    }

    #[test]
    fn parse_stray_line_is_collected_not_fatal() {
        let text = doc(r"<key>all_tasks</key>
warning: time went backwards by 1418132621000000000 ns
<dict><key>pid</key><integer>-2</integer><key>cputime_ns</key><integer>9</integer></dict>");
        let parsed = parse_document(text.as_bytes()).expect("valid document");
        assert_eq!(
            parsed.stray_lines,
            vec!["warning: time went backwards by 1418132621000000000 ns".to_owned()]
        );
        let all = parsed.all_tasks.expect("all_tasks");
        assert_eq!(all.pid, Some(-2));
        assert_eq!(all.cputime_ns, Some(9));
    }

    #[test]
    fn parse_truncated_document_is_an_error() {
        let text = doc("<key>elapsed_ns</key><integer>5</integer>");
        let cut = &text.as_bytes()[..text.len() - 20];
        assert!(matches!(
            parse_document(cut),
            Err(PlistError::Truncated | PlistError::Xml { .. })
        ));
    }

    #[test]
    fn parse_text_format_is_refused() {
        let text = "Machine model: Mac16,6\nOS version: 24F74\n\n*** Sampled system activity \
                    (Sat Nov  8 15:54:21 2025 +0900) (5021.96ms elapsed) ***\n";
        let err = parse_document(text.as_bytes()).expect_err("text format");
        assert!(matches!(err, PlistError::TextFormat));
        assert!(err.to_string().contains("--format plist"));
    }

    #[test]
    fn parse_intel_units_convert_to_milli() {
        let text = doc(r"<key>processor</key><dict>
<key>package_joules</key><real>27.5028</real>
<key>package_watts</key><real>5.49528</real></dict>");
        let parsed = parse_document(text.as_bytes()).expect("valid document");
        let package = parsed.reading("package").expect("package reading");
        assert!(package.base_units);
        assert!((package.reported_mj.expect("mJ") - 27_502.8).abs() < 1e-6);
        assert!((package.power_mw.expect("mW") - 5_495.28).abs() < 1e-6);
    }

    #[test]
    fn parse_unknown_elements_and_comments_are_skipped() {
        let text = doc(r"<!-- a comment -->
<key>weird</key><foo><bar>1</bar></foo>
<key>GPU</key><array><dict><key>misc counters</key><dict/></dict></array><!-- end GPU -->
<key>elapsed_ns</key><integer>3</integer>");
        let parsed = parse_document(text.as_bytes()).expect("valid document");
        assert_eq!(parsed.elapsed_ns, Some(3));
    }
}
