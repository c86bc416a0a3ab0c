//! PostgreSQL's offline method for a major version: `pg_upgrade`.
//!
//! The target image has no server of the source major, so the check pod's first container,
//! in the source image, keeps that release's files on the primary's volume (`$D/.baton/pg-N`,
//! each directory at its own absolute path under it, so the binaries find their libraries and
//! share files relative to themselves as they do in place). Its second container, in the
//! target image, runs `pg_upgrade --check` against the live primary: a failure stops the
//! upgrade before anything is stopped. The conversion itself is the boot script's (a primary
//! whose data is of another major converts it into a new directory, keeping the old one), and
//! what pg_upgrade asks to follow runs once writes are let in ([`FINISH`]).

use k8s_openapi::api::core::v1::{Container, EnvVar, VolumeMount};

use super::DATA;

/// In the source image: keep this release's files beside the data (once; an interrupted copy
/// is redone).
const KEEP_RELEASE: &str = r#"set -eu
D=/var/lib/postgresql/data
keep=${BATON_KEEP_DIR:-$D/.baton}
umask 077
bin=$(dirname "$(command -v postgres)")
major=$(postgres -V | sed -E 's/^[^0-9]*([0-9]+).*/\1/')
dest="$keep/pg-$major"
if [ ! -s "$dest/bindir" ]; then
  rm -rf "$dest.tmp"
  mkdir -p "$dest.tmp"
  if command -v pg_config >/dev/null 2>&1; then
    dirs="$(pg_config --bindir) $(pg_config --libdir) $(pg_config --pkglibdir) $(pg_config --sharedir)"
  else
    dirs="$(dirname "$bin")"
  fi
  for d in $dirs; do
    if [ -d "$d" ] && [ ! -e "$dest.tmp$d" ]; then
      mkdir -p "$dest.tmp$(dirname "$d")"
      cp -a "$d" "$dest.tmp$d"
    fi
  done
  printf '%s\n' "$bin" > "$dest.tmp/bindir"
  mv "$dest.tmp" "$dest"
fi
echo "baton: PostgreSQL $major kept at $dest""#;

/// In the target image: `pg_upgrade --check` against the live primary (it reads the running
/// server's socket and port from its postmaster.pid), with a scratch new cluster. On failure
/// the end of its report and the lists it wrote are the container's message.
const CHECK: &str = r#"set -eu
D=/var/lib/postgresql/data
keep=${BATON_KEEP_DIR:-$D/.baton}
umask 077
have=$(cat "$D/pgdata/PG_VERSION")
old="$keep/pg-$have"
work="$keep/check"
rm -rf "$work"
mkdir -p "$work"
cd "$work"
initdb -D "$work/new" -U postgres -E UTF8 -k --auth-local=trust --auth-host=trust >/dev/null
rc=0
pg_upgrade --check -b "$old$(cat "$old/bindir")" -B "$(dirname "$(command -v postgres)")" \
  -d "$D/pgdata" -D "$work/new" -U postgres -s "$work" > "$work/report" 2>&1 || rc=$?
if [ "$rc" -ne 0 ]; then
  grep -v '^[[:space:]]*$' "$work/report" | grep -v '^Performing\|^-\{10,\}' | tail -n 8
  find "$work" -name '*.txt' | while read -r f; do echo "$(basename "$f"):"; head -n 10 "$f"; done
else
  echo "baton: pg_upgrade --check passed"
fi
cd /
rm -rf "$work"
# A dry run leaves nothing behind: its copy of the release goes too.
if [ -n "${BATON_DRY_RUN:-}" ]; then rm -rf "$keep"; fi
exit "$rc""#;

/// After the upgrade, on the new primary (through `COPY … TO PROGRAM`, as the server's user):
/// the extension updates pg_upgrade wrote, the kept old data and release removed, and the
/// statistics pg_upgrade does not carry rebuilt in the background (`vacuumdb
/// --analyze-in-stages`, as its report asks). Done again after a crash, it does no harm.
pub const FINISH: &str = "set -e; D=/var/lib/postgresql/data; \
if [ -f $D/.baton/upgrade/update_extensions.sql ]; then \
psql -X -q -v ON_ERROR_STOP=1 -h $D -U postgres -d postgres -f $D/.baton/upgrade/update_extensions.sql; fi; \
rm -rf $D/pgdata.kept $D/.baton; \
setsid vacuumdb --all --analyze-in-stages -h $D -U postgres > $D/analyze.log 2>&1 < /dev/null &";

/// Whether the kept old data or release is still on the primary's volume.
pub const LEFTOVERS: &str = "SELECT (pg_stat_file('/var/lib/postgresql/data/pgdata.kept', true)).modification IS NOT NULL \
     OR (pg_stat_file('/var/lib/postgresql/data/.baton', true)).modification IS NOT NULL";

/// The check pod's containers: keep the source release (source image), then check (target).
/// A dry run's keeps it in a scratch directory of its own and removes it at the end.
pub fn check_containers(from_image: &str, to_image: &str, dry_run: bool) -> (Container, Container) {
    let env = dry_run.then(|| {
        vec![
            EnvVar {
                name: "BATON_KEEP_DIR".into(),
                value: Some(format!("{DATA}/.baton-dry-run")),
                ..Default::default()
            },
            EnvVar {
                name: "BATON_DRY_RUN".into(),
                value: Some("1".into()),
                ..Default::default()
            },
        ]
    });
    let make = |name: &str, image: &str, script: &str| Container {
        name: name.into(),
        image: Some(image.into()),
        command: Some(vec!["sh".into(), "-c".into(), script.into(), name.into()]),
        env: env.clone(),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: DATA.into(),
            ..Default::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    (
        make("keep-release", from_image, KEEP_RELEASE),
        make("pg-upgrade-check", to_image, CHECK),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_never_links_and_keeps_the_source_release_first() {
        let (keep, check) = check_containers("postgres:15.19", "postgres:17.11", false);
        assert_eq!(keep.image.as_deref(), Some("postgres:15.19"));
        assert_eq!(check.image.as_deref(), Some("postgres:17.11"));
        assert!(CHECK.contains("pg_upgrade --check"));
        assert!(!CHECK.contains("--link") && !FINISH.contains("--link"));
        assert!(KEEP_RELEASE.contains("cp -a \"$d\" \"$dest.tmp$d\""));
        // Single quotes would end the SQL literal FINISH is sent in.
        assert!(!FINISH.contains('\''));
        assert!(keep.env.is_none());
        let (keep, _) = check_containers("postgres:15.19", "postgres:17.11", true);
        let names: Vec<String> = keep.env.unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["BATON_KEEP_DIR", "BATON_DRY_RUN"]);
    }
}
