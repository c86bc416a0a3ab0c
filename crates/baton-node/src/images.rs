//! The image mapping: which local server binaries stand in for a container image.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// The mapping file (`images:` list).
#[derive(Debug, Clone, Deserialize)]
pub struct ImageMap {
    pub images: Vec<ImageSpec>,
}

/// How one image runs on this node.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// The image reference, exact (`redis:7.0.15`), or a prefix ending in `*`.
    pub image: String,
    /// Directories prepended to PATH.
    #[serde(default)]
    pub path: Vec<String>,
    /// The image's ENTRYPOINT (replaced by a container's `command`).
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// The image's CMD (replaced by a container's `args`, or dropped with a `command`).
    #[serde(default)]
    pub cmd: Vec<String>,
    /// The image's default working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// The user the image runs as (a local account), if not root.
    #[serde(default)]
    pub user: Option<String>,
    /// The image's default environment (`${VAR}` expanded like `path`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The image's declared VOLUMEs.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Files the image carries that live elsewhere on this machine: container directory →
    /// host directory, bind-mounted read-only (the operator's image: `/usr/local/bin` holding
    /// the `baton` binary built from this checkout).
    #[serde(default)]
    pub mounts: BTreeMap<String, String>,
}

impl ImageMap {
    /// Reads the file and expands `${VAR}` in every path from `vars`.
    pub fn load(path: &Path, vars: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<ImageMap> {
        let text = std::fs::read_to_string(path)?;
        let mut map: ImageMap = serde_yaml_ng::from_str(&text)?;
        for spec in &mut map.images {
            for p in spec
                .path
                .iter_mut()
                .chain(spec.mounts.values_mut())
                .chain(spec.env.values_mut())
            {
                *p = expand_braces(p, vars);
            }
        }
        Ok(map)
    }

    /// The spec for `image`: an exact match wins over the longest matching prefix.
    pub fn resolve(&self, image: &str) -> Option<&ImageSpec> {
        let image = image.strip_prefix("docker.io/library/").unwrap_or(image);
        self.images.iter().find(|s| s.image == image).or_else(|| {
            self.images
                .iter()
                .filter_map(|s| s.image.strip_suffix('*').map(|p| (p, s)))
                .filter(|(p, _)| image.starts_with(p))
                .max_by_key(|(p, _)| p.len())
                .map(|(_, s)| s)
        })
    }
}

/// The argv of a container: Kubernetes' rules for `command`/`args` over ENTRYPOINT/CMD.
pub fn argv(spec: &ImageSpec, command: &[String], args: &[String]) -> Vec<String> {
    match (command.is_empty(), args.is_empty()) {
        (false, _) => command.iter().chain(args).cloned().collect(),
        (true, false) => spec.entrypoint.iter().chain(args).cloned().collect(),
        (true, true) => spec.entrypoint.iter().chain(&spec.cmd).cloned().collect(),
    }
}

fn expand_braces(s: &str, vars: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        match rest[i + 2..].find('}') {
            Some(j) => {
                let name = &rest[i + 2..i + 2 + j];
                out.push_str(&vars(name).unwrap_or_default());
                rest = &rest[i + 3 + j..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(image: &str) -> ImageSpec {
        ImageSpec {
            image: image.into(),
            path: vec![],
            entrypoint: vec!["entry".into()],
            cmd: vec!["server".into()],
            working_dir: None,
            user: None,
            env: Default::default(),
            volumes: vec![],
            mounts: Default::default(),
        }
    }

    #[test]
    fn exact_match_beats_prefix_and_longest_prefix_wins() {
        let m = ImageMap {
            images: vec![spec("redis:*"), spec("redis:7.0.15"), spec("redis:7.*")],
        };
        assert_eq!(
            m.resolve("redis:7.0.15").map(|s| s.image.as_str()),
            Some("redis:7.0.15")
        );
        assert_eq!(
            m.resolve("redis:7.2.4").map(|s| s.image.as_str()),
            Some("redis:7.*")
        );
        assert_eq!(
            m.resolve("docker.io/library/redis:6")
                .map(|s| s.image.as_str()),
            Some("redis:*")
        );
        assert!(m.resolve("postgres:15").is_none());
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let s = spec("x");
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(argv(&s, &[], &[]), v(&["entry", "server"]));
        assert_eq!(
            argv(&s, &[], &v(&["--port", "1"])),
            v(&["entry", "--port", "1"])
        );
        assert_eq!(argv(&s, &v(&["sh"]), &[]), v(&["sh"]));
        assert_eq!(
            argv(&s, &v(&["sh"]), &v(&["-c", "x"])),
            v(&["sh", "-c", "x"])
        );
    }

    #[test]
    fn braces_expand_from_the_environment() {
        let vars = |k: &str| (k == "HOME").then(|| "/root".to_string());
        assert_eq!(
            expand_braces("${HOME}/bin:${NOPE}/x", &vars),
            "/root/bin:/x"
        );
        assert_eq!(expand_braces("${HOME", &vars), "${HOME");
    }
}
