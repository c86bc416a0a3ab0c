//! Weekly maintenance windows (UTC) and the clock Baton reads them with. Pure, except for
//! [`Clock::now`].
//!
//! The clock is injectable so tests need not wait for a real window: in a build with the
//! `test-hooks` feature and `BATON_CLOCK_OFFSET_FILE` set, the file holds a number of seconds
//! added to the system time, re-read on every call (a missing or unreadable file means no
//! offset). A release build reads the system clock, whatever the environment says.

use std::path::PathBuf;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use crate::crd::{MaintenanceWindow, Weekday};

const WEEK_SECONDS: i64 = 7 * 24 * 3600;

/// Where the operator's time comes from.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    System,
    /// The system time plus the number of seconds written in this file (for tests).
    Offset(PathBuf),
}

impl Clock {
    /// `Offset` when `BATON_CLOCK_OFFSET_FILE` is set in a `test-hooks` build, else the system
    /// clock.
    pub fn from_env() -> Clock {
        if !cfg!(feature = "test-hooks") {
            return Clock::System;
        }
        match std::env::var_os("BATON_CLOCK_OFFSET_FILE") {
            Some(p) if !p.is_empty() => Clock::Offset(p.into()),
            _ => Clock::System,
        }
    }

    pub fn now(&self) -> Timestamp {
        let now = Timestamp::now();
        match self {
            Clock::System => now,
            Clock::Offset(path) => {
                let secs = std::fs::read_to_string(path)
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok())
                    .unwrap_or(0);
                now.saturating_add(SignedDuration::from_secs(secs))
                    .unwrap_or(now)
            }
        }
    }
}

fn weekday_index(d: Weekday) -> i64 {
    match d {
        Weekday::Monday => 0,
        Weekday::Tuesday => 1,
        Weekday::Wednesday => 2,
        Weekday::Thursday => 3,
        Weekday::Friday => 4,
        Weekday::Saturday => 5,
        Weekday::Sunday => 6,
    }
}

/// Seconds since Monday 00:00 UTC of `t`'s week.
fn second_of_week(t: Timestamp) -> i64 {
    let z = t.to_zoned(TimeZone::UTC);
    i64::from(z.weekday().to_monday_zero_offset()) * 86400
        + i64::from(z.hour()) * 3600
        + i64::from(z.minute()) * 60
        + i64::from(z.second())
}

/// The window's opening, in seconds since Monday 00:00 UTC. The schema guarantees `HH:MM`.
fn opening(w: &MaintenanceWindow) -> i64 {
    let (h, m) = w.start_time.split_once(':').unwrap_or(("0", "0"));
    let h: i64 = h.parse().unwrap_or(0);
    let m: i64 = m.parse().unwrap_or(0);
    weekday_index(w.day_of_week) * 86400 + h * 3600 + m * 60
}

/// Whether `now` is inside the weekly window.
pub fn is_open(now: Timestamp, w: &MaintenanceWindow) -> bool {
    let since = (second_of_week(now) - opening(w)).rem_euclid(WEEK_SECONDS);
    since < i64::from(w.duration_minutes.max(0)) * 60
}

/// `now` if the window is open, else when it next opens.
pub fn next_open(now: Timestamp, w: &MaintenanceWindow) -> Timestamp {
    if is_open(now, w) {
        return now;
    }
    let wait = (opening(w) - second_of_week(now)).rem_euclid(WEEK_SECONDS);
    // Whole seconds: drop the sub-second part so the result is the opening minute exactly.
    let base = Timestamp::from_second(now.as_second()).unwrap_or(now);
    base.saturating_add(SignedDuration::from_secs(wait))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(day: Weekday, start: &str, minutes: i32) -> MaintenanceWindow {
        MaintenanceWindow {
            day_of_week: day,
            start_time: start.into(),
            duration_minutes: minutes,
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn open_inside_the_window_only() {
        // 2026-11-22 is a Sunday.
        let w = window(Weekday::Sunday, "02:00", 180);
        assert!(!is_open(at("2026-11-22T01:59:59Z"), &w));
        assert!(is_open(at("2026-11-22T02:00:00Z"), &w));
        assert!(is_open(at("2026-11-22T04:59:59Z"), &w));
        assert!(!is_open(at("2026-11-22T05:00:00Z"), &w));
        assert!(!is_open(at("2026-11-25T03:00:00Z"), &w));
    }

    #[test]
    fn a_window_may_cross_midnight_and_the_week_end() {
        let w = window(Weekday::Sunday, "23:00", 120);
        assert!(is_open(at("2026-11-22T23:30:00Z"), &w));
        assert!(is_open(at("2026-11-23T00:30:00Z"), &w)); // Monday, still inside
        assert!(!is_open(at("2026-11-23T01:00:00Z"), &w));
    }

    #[test]
    fn next_open_is_the_coming_opening() {
        let w = window(Weekday::Sunday, "02:00", 60);
        assert_eq!(
            next_open(at("2026-11-21T20:30:15Z"), &w),
            at("2026-11-22T02:00:00Z")
        );
        // Just after it closed: a week later.
        assert_eq!(
            next_open(at("2026-11-22T03:00:00Z"), &w),
            at("2026-11-29T02:00:00Z")
        );
        let now = at("2026-11-22T02:10:00Z");
        assert_eq!(next_open(now, &w), now);
    }

    #[test]
    fn the_offset_clock_adds_the_file_seconds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("offset");
        let clock = Clock::Offset(file.clone());
        let drift = |c: &Clock| (c.now().as_second() - Timestamp::now().as_second()).abs();
        assert!(drift(&clock) <= 1, "a missing file means no offset");
        std::fs::write(&file, "86400\n").expect("write");
        assert!((clock.now().as_second() - Timestamp::now().as_second() - 86400).abs() <= 1);
    }
}
