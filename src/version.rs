//! Datastore version strings (`MAJOR[.MINOR[.PATCH]][-BUILD]`): parsing and ordering.
//!
//! Numeric parts compare as numbers and missing parts count as zero (`7.0` == `7.0.0`). A
//! `-BUILD` suffix names another build of the same version: it sorts after the plain version,
//! and builds compare as strings.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// A parsed datastore version.
#[derive(Clone, Debug)]
pub struct Version {
    parts: Vec<u64>,
    build: Option<String>,
    raw: String,
}

/// Why a version string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version {raw:?} is not MAJOR[.MINOR[.PATCH]][-BUILD] (for example 7.0.15)")]
pub struct ParseVersionError {
    raw: String,
}

impl FromStr for Version {
    type Err = ParseVersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseVersionError { raw: s.to_string() };
        let (numbers, build) = match s.split_once('-') {
            Some((n, b)) => (n, Some(b)),
            None => (s, None),
        };
        if let Some(b) = build
            && (b.is_empty()
                || !b.starts_with(|c: char| c.is_ascii_alphanumeric())
                || !b.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'))
        {
            return Err(err());
        }
        let parts: Vec<u64> = numbers
            .split('.')
            .map(|p| {
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    None
                } else {
                    p.parse().ok()
                }
            })
            .collect::<Option<_>>()
            .ok_or_else(err)?;
        if parts.is_empty() || parts.len() > 3 {
            return Err(err());
        }
        Ok(Version {
            parts,
            build: build.map(str::to_string),
            raw: s.to_string(),
        })
    }
}

impl Version {
    /// The major version (`7` of `7.0.15`).
    pub fn major(&self) -> u64 {
        self.parts[0]
    }

    /// The build suffix, if any (`hotfix1` of `7.0.15-hotfix1`).
    pub fn build(&self) -> Option<&str> {
        self.build.as_deref()
    }

    /// The version as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    fn part(&self, i: usize) -> u64 {
        self.parts.get(i).copied().unwrap_or(0)
    }

    /// Compares only the numeric parts (ignores the build).
    pub fn cmp_release(&self, other: &Version) -> Ordering {
        (0..3)
            .map(|i| self.part(i).cmp(&other.part(i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }

    /// True when `self`, as a bound, names a release line that contains `v`: `6` contains
    /// `6.2.14`, `6.2` contains `6.2.14`, `6.2.14` contains only itself (and its builds).
    pub fn contains(&self, v: &Version) -> bool {
        self.parts.iter().enumerate().all(|(i, p)| *p == v.part(i))
            && (self.build.is_none() || self.build == v.build)
    }

    /// True when `v` lies in the inclusive range `[min, max]`; a missing bound is open, and a
    /// shorter `max` covers its whole release line.
    pub fn in_range(v: &Version, min: Option<&Version>, max: Option<&Version>) -> bool {
        min.is_none_or(|m| v >= m) && max.is_none_or(|m| v <= m || m.contains(v))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.cmp_release(other)
            .then_with(|| self.build.cmp(&other.build))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().expect("valid version")
    }

    #[test]
    fn parses_well_formed_versions() {
        for s in [
            "7",
            "7.0",
            "7.0.15",
            "10.11",
            "7.0.15-hotfix1",
            "15-2.bookworm",
        ] {
            assert_eq!(v(s).as_str(), s);
        }
        assert_eq!(v("7.0.15").major(), 7);
        assert_eq!(v("7.0.15-hf1").build(), Some("hf1"));
    }

    #[test]
    fn refuses_malformed_versions() {
        for s in [
            "", "seven", "7.", ".7", "7..1", "1.2.3.4", "7.0-", "7.0-.x", "v7.0", "7.0 ",
        ] {
            assert!(s.parse::<Version>().is_err(), "{s:?} should be refused");
        }
    }

    #[test]
    fn orders_numerically_not_lexically() {
        assert!(v("6.2.14") < v("7.0.15"));
        assert!(v("7.0.9") < v("7.0.15"));
        assert!(v("10.4") > v("9.6"));
        assert_eq!(v("7.0"), v("7.0.0"));
        assert!(v("7.0.15") < v("7.0.15-hf1"));
        assert!(v("7.0.15-hf1") < v("7.0.15-hf2"));
        assert_eq!(v("7.0.15-hf1").cmp_release(&v("7.0.15")), Ordering::Equal);
    }

    #[test]
    fn ranges_are_inclusive_and_short_bounds_cover_release_lines() {
        let (min, max) = (v("6.0"), v("6"));
        assert!(Version::in_range(&v("6.2.14"), Some(&min), Some(&max)));
        assert!(!Version::in_range(&v("7.0.0"), Some(&min), Some(&max)));
        assert!(!Version::in_range(&v("5.9"), Some(&min), None));
        assert!(Version::in_range(&v("5.6.51"), None, Some(&v("5.7"))));
        assert!(Version::in_range(&v("5.7.44"), None, Some(&v("5.7"))));
        assert!(!Version::in_range(&v("5.8"), None, Some(&v("5.7"))));
        assert!(Version::in_range(&v("1.0"), None, None));
    }
}
