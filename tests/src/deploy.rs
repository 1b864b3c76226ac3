//! The deployment files in `deploy/`, read the way their tools read them, so
//! tests can run the exact commands they name: a Dockerfile's stages,
//! ENTRYPOINT and CMD; a systemd unit's keys; and an install layout, a
//! directory standing in for `/` with the files a deployment puts there.

use std::{
    fs, io,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// The repository root (this package is `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

pub fn dockerfile_path() -> PathBuf {
    repo_root().join("deploy/container/Dockerfile")
}

pub fn unit_path() -> PathBuf {
    repo_root().join("deploy/systemd/bg-lb.service")
}

/// One instruction, with continuation lines joined and comments dropped.
#[derive(Clone, Debug)]
pub struct Instruction {
    /// Upper case: `RUN`, `COPY`, ...
    pub keyword: String,
    pub args: String,
}

impl Instruction {
    /// The exec (JSON array) form's words, or `None` for the shell form.
    pub fn exec_form(&self) -> Option<Vec<String>> {
        serde_json::from_str(&self.args).ok()
    }
}

/// A build stage: `FROM image [AS name]` and what follows it.
#[derive(Debug)]
pub struct Stage {
    pub image: String,
    pub name: Option<String>,
    pub instructions: Vec<Instruction>,
}

impl Stage {
    pub fn all(&self, keyword: &str) -> impl Iterator<Item = &Instruction> {
        self.instructions.iter().filter(move |i| i.keyword == keyword)
    }

    /// The last instruction of a kind, the one that takes effect.
    pub fn last(&self, keyword: &str) -> Option<&Instruction> {
        self.all(keyword).last()
    }
}

#[derive(Debug)]
pub struct Dockerfile {
    /// Instructions before the first FROM (global ARGs).
    pub preamble: Vec<Instruction>,
    pub stages: Vec<Stage>,
}

impl Dockerfile {
    pub fn read(path: &Path) -> Self {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Self {
        let mut dockerfile = Dockerfile {
            preamble: Vec::new(),
            stages: Vec::new(),
        };
        for instruction in instructions(text) {
            if instruction.keyword == "FROM" {
                let words: Vec<&str> = instruction.args.split_whitespace().collect();
                let name = match words.as_slice() {
                    [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                    _ => None,
                };
                dockerfile.stages.push(Stage {
                    image: words.first().expect("FROM needs an image").to_string(),
                    name,
                    instructions: Vec::new(),
                });
            } else if let Some(stage) = dockerfile.stages.last_mut() {
                stage.instructions.push(instruction);
            } else {
                dockerfile.preamble.push(instruction);
            }
        }
        dockerfile
    }

    /// The image that runs: the last stage.
    pub fn runtime(&self) -> &Stage {
        self.stages.last().expect("a Dockerfile has a stage")
    }

    /// The default value of a global `ARG NAME=VALUE` (before the first FROM).
    pub fn arg_default(&self, name: &str) -> Option<&str> {
        self.preamble
            .iter()
            .filter(|i| i.keyword == "ARG")
            .find_map(|i| i.args.strip_prefix(name)?.strip_prefix('='))
    }

    /// What a stage is built FROM, with a global ARG (`FROM ${BASE}`) at its
    /// default, as a build without `--build-arg` sees it.
    pub fn image_of(&self, stage: &Stage) -> String {
        let image = stage.image.as_str();
        let arg = image
            .strip_prefix("${")
            .and_then(|a| a.strip_suffix('}'))
            .or_else(|| image.strip_prefix('$'));
        match arg {
            Some(arg) => self
                .arg_default(arg)
                .unwrap_or_else(|| panic!("FROM {image}: the global ARG {arg} has no default"))
                .to_owned(),
            None => image.to_owned(),
        }
    }

    /// The stage named `name`.
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name.as_deref() == Some(name))
    }

    /// ENTRYPOINT followed by CMD, as the container runs them by default.
    pub fn default_command(&self) -> Vec<String> {
        let runtime = self.runtime();
        let exec = |keyword: &str| {
            runtime.last(keyword).map_or_else(Vec::new, |i| {
                i.exec_form()
                    .unwrap_or_else(|| panic!("{keyword} must use the exec (JSON) form: {}", i.args))
            })
        };
        [exec("ENTRYPOINT"), exec("CMD")].concat()
    }
}

/// Splits a Dockerfile into instructions: `\` continues a line, `#` starts a
/// comment line (also inside a continued instruction), blank lines vanish.
fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, args) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
                out.push(Instruction {
                    keyword: keyword.to_ascii_uppercase(),
                    args: args.split_whitespace().collect::<Vec<_>>().join(" "),
                });
                current.clear();
            }
        }
    }
    out
}

/// A systemd unit file: `[Section]` headers and `Key=Value` lines.
#[derive(Debug)]
pub struct Unit {
    entries: Vec<(String, String, String)>,
}

impl Unit {
    pub fn read(path: &Path) -> Self {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut section = String::new();
        let mut entries = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
            } else if let Some((key, value)) = line.split_once('=') {
                entries.push((section.clone(), key.trim().to_owned(), value.trim().to_owned()));
            }
        }
        Unit { entries }
    }

    /// Every value of `section.key`, in order.
    pub fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The value that takes effect (the last), if any.
    pub fn get(&self, section: &str, key: &str) -> Option<&str> {
        self.all(section, key).pop()
    }

    /// `[Service] CapabilityBoundingSet`, lower case without `CAP_`, as
    /// setpriv spells them (`bpf`, `net_admin`, ...).
    pub fn capabilities(&self) -> Vec<String> {
        self.get("Service", "CapabilityBoundingSet")
            .expect("the unit sets CapabilityBoundingSet")
            .split_whitespace()
            .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
            .collect()
    }

    /// `ExecStart`'s words (the unit uses no quoting).
    pub fn exec_start(&self) -> Vec<String> {
        self.get("Service", "ExecStart")
            .expect("the unit has an ExecStart")
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}

/// A directory standing in for `/`: files go where a deployment puts them,
/// and commands that name absolute paths are run against it. Removed on drop.
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(name: &str) -> Self {
        let root = std::env::temp_dir().join(format!("bglb-layout-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).expect("layout root");
        // Unprivileged users (the ctl permission test) must reach the files.
        set_mode(&root, 0o755);
        Layout { root }
    }

    /// Where `/absolute/path` is inside the layout.
    pub fn path(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }

    /// Copies `from` to `/absolute/path` in the layout with `mode`, creating
    /// directories (0755) on the way.
    pub fn install(&self, from: &Path, absolute: &str, mode: u32) -> PathBuf {
        let to = self.path(absolute);
        let mut dir = to.parent().expect("a file has a parent").to_path_buf();
        fs::create_dir_all(&dir).expect("layout directories");
        while dir != self.root {
            set_mode(&dir, 0o755);
            dir.pop();
        }
        fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
        set_mode(&to, mode);
        if mode & 0o111 != 0 {
            wait_until_executable(&to);
        }
        to
    }

    /// `command` with every word that names an existing file of the layout
    /// (`/usr/local/bin/bg-lb`, `/etc/bg-lb/bg-lb.toml`) pointed into it, as a
    /// bind mount of those paths would.
    pub fn map_command(&self, command: &[String]) -> Vec<String> {
        command
            .iter()
            .map(|word| {
                let inside = self.path(word);
                if word.starts_with('/') && inside.exists() {
                    inside.display().to_string()
                } else {
                    word.clone()
                }
            })
            .collect()
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Waits until the program at `path` can be started. A process that another
/// test thread forked while the copy was open for writing holds that
/// descriptor until it execs, and until then exec fails with ETXTBSY.
fn wait_until_executable(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let started = Command::new(path)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match started {
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(10));
            }
            _ => return,
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_instructions_join_continuations_and_skip_comments() {
        let file = Dockerfile::parse(
            "ARG X=1\nFROM a:1 AS build\n# note\nRUN one \\\n    # inner comment\n    two\n\nFROM b:2\n\
             ENTRYPOINT [\"/bin/x\"]\nCMD [\"run\", \"--config\", \"/etc/x\"]\n",
        );
        assert_eq!(file.preamble.len(), 1);
        assert_eq!(file.stages.len(), 2);
        assert_eq!(file.stages[0].name.as_deref(), Some("build"));
        assert_eq!(file.stages[0].instructions[0].args, "one two");
        assert_eq!(file.runtime().image, "b:2");
        assert_eq!(file.default_command(), ["/bin/x", "run", "--config", "/etc/x"]);
    }

    #[test]
    fn stage_images_take_global_arg_defaults() {
        let file =
            Dockerfile::parse("ARG BASE=a:1\nARG FROM_STAGE=build\nFROM ${BASE} AS build\nFROM $FROM_STAGE AS bin\n");
        assert_eq!(file.arg_default("BASE"), Some("a:1"));
        assert_eq!(file.arg_default("BAS"), None);
        assert_eq!(file.image_of(&file.stages[0]), "a:1");
        assert_eq!(file.image_of(file.stage("bin").unwrap()), "build");
    }
}
