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
    /// The primary group, when the pod names one (`runAsGroup`); else the user's own.
    pub group: Option<String>,
    /// Supplementary groups (`fsGroup`, `supplementalGroups`).
    pub groups: Vec<i64>,
    /// `readOnlyRootFilesystem`: the root mount is read-only in the container's view; its
    /// volumes stay as mounted.
    pub read_only_root: bool,
    /// `allowPrivilegeEscalation: false`: no_new_privs, so no setuid binary raises privileges.
    pub no_new_privs: bool,
    /// `capabilities.drop: [ALL]`: the bounding and inheritable sets are emptied.
    pub drop_all_caps: bool,
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
        s.push_str(&format!("mkdir -p {}\n", quote(wd)));
    }
    if l.read_only_root {
        // Per-mount flag of this namespace's copy of the root mount: the host's stays writable.
        s.push_str("mount -o remount,bind,ro /\n");
    }
    if let Some(wd) = &l.working_dir {
        s.push_str(&format!("cd {}\n", quote(wd)));
    }
    let mut setpriv = Vec::new();
    if l.no_new_privs {
        setpriv.push("--no-new-privs".to_string());
    }
    if l.drop_all_caps {
        setpriv.push("--inh-caps=-all --bounding-set=-all".to_string());
    }
    match &l.user {
        // A numeric user (runAsUser) need not exist on the machine, as in a container: its
        // groups are the pod's, not looked up.
        Some(u) if u.parse::<u32>().is_ok() => {
            let group = l.group.clone().unwrap_or_else(|| u.clone());
            let groups = if l.groups.is_empty() {
                "--clear-groups".to_string()
            } else {
                let list: Vec<String> = l.groups.iter().map(i64::to_string).collect();
                format!("--groups={}", list.join(","))
            };
            s.push_str(&format!(
                "export HOME=${{HOME:-/}}\nexec setpriv --reuid={u} --regid={} {groups} {} -- \"$@\"\n",
                quote(&group),
                setpriv.join(" ")
            ));
        }
        // HOME is the user's own, as a container runtime sets it (libpq, for one, reads files
        // under it and fails on a home it cannot enter), unless the pod set it.
        Some(u) => s.push_str(&format!(
            "[ -n \"${{HOME:-}}\" ] || HOME=$(getent passwd {0} | cut -d: -f6); export HOME=${{HOME:-/}}\n\
             exec setpriv --reuid={0} --regid={1} --init-groups {2} -- \"$@\"\n",
            quote(u),
            quote(l.group.as_deref().unwrap_or(u)),
            setpriv.join(" ")
        )),
        None if !setpriv.is_empty() => {
            s.push_str(&format!("exec setpriv {} -- \"$@\"\n", setpriv.join(" ")))
        }
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
    // Taken before anything exits: an orphan no longer names its ancestor.
    let tree = descendants(pid);
    signal(pid, "TERM", false);
    let status = match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            signal(pid, "KILL", true);
            child.wait().await.ok()
        }
    };
    // Anything the container forked and left behind goes with it: its process group, and every
    // descendant that left the group (PostgreSQL's backends call setsid), as the kubelet's
    // cgroup would. A hung (stopped) backend would otherwise keep the data directory's shared
    // memory and the next start would refuse it.
    signal(pid, "KILL", true);
    for p in tree {
        signal(p, "KILL", false);
    }
    status.and_then(|s| s.code())
}

/// Every live process descended from `pid`, read from `/proc`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut children: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`: comm may hold spaces and parentheses; the last ')' ends it.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|f| f.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            children.entry(ppid).or_default().push(p);
        }
    }
    let mut out = Vec::new();
    let mut next = vec![pid];
    while let Some(p) = next.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            out.push(c);
            next.push(c);
        }
    }
    out
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
    fn descendants_include_grandchildren_that_left_the_group() {
        // sh → (setsid) sleep: the grandchild leads its own session, as a PostgreSQL backend does.
        let mut c = std::process::Command::new("sh")
            .args(["-c", "setsid sleep 30 & sleep 30"])
            .spawn()
            .unwrap();
        let pid = c.id();
        let found = (0..50).find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let d = descendants(pid);
            (d.len() >= 2).then_some(d)
        });
        let d = found.expect("both sleeps found");
        for p in &d {
            signal(*p, "KILL", false);
        }
        let _ = c.kill();
        let _ = c.wait();
        assert!(d.len() >= 2, "{d:?}");
    }

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
            group: None,
            groups: vec![],
            read_only_root: false,
            no_new_privs: false,
            drop_all_caps: false,
            log: PathBuf::from("/dev/null"),
        };
        let s = mount_script(&l);
        let mount = s.find("mount --bind").unwrap();
        let ro = s.find("remount,bind,ro").unwrap();
        let exec = s.find("exec setpriv").unwrap();
        assert!(mount < ro && ro < exec, "{s}");
        assert!(s.contains(r"'/var/lib/it'\''s'"), "{s}");
        assert!(s.contains("cd '/data'"), "{s}");
        assert!(s.contains("--init-groups"), "{s}");
    }

    #[test]
    fn a_hardened_numeric_user_gets_a_read_only_root_and_no_privileges() {
        let l = Launch {
            argv: vec!["/usr/local/bin/baton".into()],
            env: Default::default(),
            mounts: vec![],
            working_dir: Some("/".into()),
            user: Some("65532".into()),
            group: Some("65532".into()),
            groups: vec![65532],
            read_only_root: true,
            no_new_privs: true,
            drop_all_caps: true,
            log: PathBuf::from("/dev/null"),
        };
        let s = mount_script(&l);
        let (mkdir, ro, cd) = (
            s.find("mkdir -p '/'").unwrap(),
            s.find("remount,bind,ro /").unwrap(),
            s.find("cd '/'").unwrap(),
        );
        assert!(mkdir < ro && ro < cd, "{s}");
        assert!(
            s.contains("--reuid=65532 --regid='65532' --groups=65532"),
            "{s}"
        );
        assert!(s.contains("--no-new-privs"), "{s}");
        assert!(s.contains("--bounding-set=-all"), "{s}");
        assert!(
            !s.contains("--init-groups"),
            "no passwd entry is looked up: {s}"
        );
    }

    #[test]
    fn path_puts_the_image_first() {
        assert_eq!(
            container_path(&["/opt/r6".into()]),
            format!("/opt/r6:{SYSTEM_PATH}")
        );
    }
}
