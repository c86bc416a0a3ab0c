//! Running a container as a local process: a private mount namespace (`unshare`) in which the
//! pod's volumes are bind-mounted at their `mountPath`s, the image's user, working directory,
//! PATH and environment, the podnet shim for the pod's own loopback address, and a process group
//! of its own so the whole container can be killed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// A bind mount into the container's view of the filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// Everything needed to start one container process.
#[derive(Debug, Clone)]
pub struct Launch {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub mounts: Vec<Mount>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub log: PathBuf,
}

const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// PATH for a container: the image's directories, then the system's.
pub fn container_path(image_path: &[String]) -> String {
    image_path
        .iter()
        .map(String::as_str)
        .chain([SYSTEM_PATH])
        .collect::<Vec<_>>()
        .join(":")
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The shell script run inside the new mount namespace: mount, cd, drop privileges, exec.
/// `exec` keeps the container's PID equal to the PID the agent spawned.
pub fn mount_script(l: &Launch) -> String {
    let mut s = String::from("set -e\n");
    for m in &l.mounts {
        let (src, dst) = (quote(&m.source.to_string_lossy()), quote(&m.target));
        if m.source.is_dir() {
            s.push_str(&format!("mkdir -p {dst}\n"));
        } else {
            s.push_str(&format!(
                "mkdir -p \"$(dirname {dst})\"; [ -e {dst} ] || : > {dst}\n"
            ));
        }
        s.push_str(&format!("mount --bind {src} {dst}\n"));
        if m.read_only {
            s.push_str(&format!("mount -o remount,bind,ro {dst}\n"));
        }
    }
    if let Some(wd) = &l.working_dir {
        s.push_str(&format!("mkdir -p {0}; cd {0}\n", quote(wd)));
    }
    match &l.user {
        // HOME is the user's own, as a container runtime sets it (libpq, for one, reads files
        // under it and fails on a home it cannot enter), unless the pod set it.
        Some(u) => s.push_str(&format!(
            "[ -n \"${{HOME:-}}\" ] || HOME=$(getent passwd {0} | cut -d: -f6); export HOME=${{HOME:-/}}\n\
             exec setpriv --reuid={0} --regid={0} --init-groups -- \"$@\"\n",
            quote(u)
        )),
        None => s.push_str("exec \"$@\"\n"),
    }
    s
}

/// Starts the container process. Its stdout and stderr are appended to `l.log`.
pub fn start(l: &Launch) -> std::io::Result<Child> {
    if let Some(dir) = l.log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&l.log)?;
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
        .arg(mount_script(l))
        .arg("baton-container")
        .args(&l.argv)
        .env_clear()
        .envs(&l.env)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(false);
    cmd.spawn()
}

/// Sends `signal` (a name such as `TERM`) to one process, or to a whole group with `group`.
pub fn signal(pid: u32, signal: &str, group: bool) {
    let target = if group {
        format!("-{pid}")
    } else {
        pid.to_string()
    };
    let _ = std::process::Command::new("kill")
        .args([&format!("-{signal}"), "--", &target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Stops a container as the kubelet does: SIGTERM to its main process, up to `grace` to exit,
/// then SIGKILL to its whole process group. Returns the exit code, if it exited normally.
pub async fn stop(child: &mut Child, grace: Duration) -> Option<i32> {
    let Some(pid) = child.id() else {
        return child.wait().await.ok().and_then(|s| s.code());
    };
    signal(pid, "TERM", false);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            signal(pid, "KILL", true);
            child.wait().await.ok()
        }
    };
    // Anything the container forked and left behind goes with it.
    signal(pid, "KILL", true);
    status.and_then(|s| s.code())
}

/// Whether `path` is under `root` (for subPath safety).
pub fn is_within(root: &Path, path: &Path) -> bool {
    path.components()
        .all(|c| !matches!(c, std::path::Component::ParentDir))
        && path.starts_with(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_mounts_then_drops_privileges_then_execs() {
        let dir = tempfile::tempdir().unwrap();
        let l = Launch {
            argv: vec!["postgres".into()],
            env: Default::default(),
            mounts: vec![Mount {
                source: dir.path().to_path_buf(),
                target: "/var/lib/it's".into(),
                read_only: true,
            }],
            working_dir: Some("/data".into()),
            user: Some("postgres".into()),
            log: PathBuf::from("/dev/null"),
        };
        let s = mount_script(&l);
        let mount = s.find("mount --bind").unwrap();
        let ro = s.find("remount,bind,ro").unwrap();
        let exec = s.find("exec setpriv").unwrap();
        assert!(mount < ro && ro < exec, "{s}");
        assert!(s.contains(r"'/var/lib/it'\''s'"), "{s}");
        assert!(s.contains("cd '/data'"), "{s}");
    }

    #[test]
    fn path_puts_the_image_first() {
        assert_eq!(
            container_path(&["/opt/r6".into()]),
            format!("/opt/r6:{SYSTEM_PATH}")
        );
    }
}
