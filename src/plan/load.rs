//! Loading plans from YAML files (I/O edge: reads files; everything else is pure).
//!
//! Owns turning files into [`LoadedPlan`]s with errors that name file, line and column, and the
//! rule that one bad document never stops the others from loading. Accepts `recoverd.io` and
//! Nova's `recovery.elotl.co` plans; Nova's unnamed steps become `step-1`, `step-2`…

use std::fmt;
use std::path::{Path, PathBuf};

use kube::core::ObjectMeta;
use serde::Deserialize;

use super::model::{RecoveryPlan, RecoveryPlanSpec};

pub const API_VERSION: &str = "recoverd.io/v1alpha1";
pub const NOVA_API_VERSION: &str = "recovery.elotl.co/v1alpha1";

/// A plan read from a file, with where it came from.
#[derive(Clone, Debug)]
pub struct LoadedPlan {
    pub plan: RecoveryPlan,
    pub source: Source,
    /// Written in Nova's `recovery.elotl.co` format.
    pub nova: bool,
}

/// Where a document came from, for messages.
#[derive(Clone, Debug, Default)]
pub struct Source {
    pub file: PathBuf,
    /// 1-based line where the document starts.
    pub line: usize,
    /// The document's text, for `recoverd check` to point at fields. A compiled
    /// [`super::Plan`] does not keep it (empty): a running server never shows it.
    pub text: String,
}

/// A document that could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0: the file as a whole (it could not be read), no position in it.
        match self.line {
            0 => write!(f, "{}: {}", self.file.display(), self.message),
            _ => write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            ),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document {
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
    spec: RecoveryPlanSpec,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<serde_yaml::Value>,
}

/// Just enough of a document to tell what it is before reading it as a plan.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    api_version: Option<String>,
    kind: Option<String>,
}

/// The largest plan file read.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// The most plan files read from all `--plans` paths together.
pub const MAX_FILES: usize = 10_000;
/// The most steps (with `onFailure` steps) one plan may have.
pub const MAX_STEPS: usize = 500;
/// How deep directories are searched.
const MAX_DEPTH: usize = 32;

/// Loads every plan under the given paths (files, or directories searched for `*.yaml`/`*.yml`).
pub fn load_paths(paths: &[PathBuf]) -> (Vec<LoadedPlan>, Vec<LoadError>) {
    let mut plans = Vec::new();
    let errors = load_paths_each(paths, |p| plans.extend(p));
    (plans, errors)
}

/// [`load_paths`] one file at a time: `each` gets the plans of each file in turn (so that a
/// caller keeping something smaller than a loaded plan never holds them all at once); the
/// errors of every file, in the same order as [`load_paths`], are returned at the end.
pub fn load_paths_each(paths: &[PathBuf], mut each: impl FnMut(Vec<LoadedPlan>)) -> Vec<LoadError> {
    let mut errors = Vec::new();
    for file in plan_files(paths, &mut errors) {
        match read_limited(&file) {
            Ok(text) => {
                let (p, e) = load_str(&file, &text);
                drop(text);
                each(p);
                errors.extend(e);
            }
            Err(message) => errors.push(LoadError {
                file,
                line: 0,
                column: 0,
                message,
            }),
        }
    }
    errors
}

/// A file's text, refusing one over [`MAX_FILE_BYTES`] without reading it all.
fn read_limited(file: &Path) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(file).map_err(|e| format!("failed to read: {e}"))?;
    let mut text = String::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("failed to read: {e}"))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "the file is larger than {MAX_FILE_BYTES} bytes; a plan never needs that much (split it, or keep large templates in a ConfigMap)"
        ));
    }
    Ok(text)
}

fn walk_error(errors: &mut Vec<LoadError>, file: &Path, message: String) {
    errors.push(LoadError {
        file: file.to_path_buf(),
        line: 0,
        column: 0,
        message,
    });
}

/// The YAML files under `paths`, sorted, directories searched recursively (except a
/// directory named `worlds`: rehearsal worlds kept beside the plans).
///
/// Symbolic links are followed only to files and directories inside the directory given (a
/// mounted ConfigMap links every file to `..data/`); a link out of the tree is reported and
/// skipped, and a directory reached twice (a link loop) is read once. At most [`MAX_FILES`]
/// files, [`MAX_DEPTH`] directories deep.
pub fn plan_files(paths: &[PathBuf], errors: &mut Vec<LoadError>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut too_many = false;
    for p in paths {
        if p.is_dir() {
            let Ok(root) = p.canonicalize() else {
                walk_error(errors, p, "cannot resolve the directory".into());
                continue;
            };
            let mut visited = std::collections::BTreeSet::from([root.clone()]);
            let mut stack = vec![(p.clone(), 0usize)];
            while let Some((dir, depth)) = stack.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    // A ConfigMap mount holds `..data` and `..<timestamp>` copies of every file.
                    if entry.file_name().to_string_lossy().starts_with('.') {
                        continue;
                    }
                    let path = entry.path();
                    let Ok(kind) = entry.file_type() else {
                        continue;
                    };
                    let (is_dir, real) = if kind.is_symlink() {
                        let Ok(real) = path.canonicalize() else {
                            walk_error(errors, &path, "a symbolic link to nothing".into());
                            continue;
                        };
                        if !real.starts_with(&root) {
                            walk_error(
                                errors,
                                &path,
                                format!(
                                    "a symbolic link out of the plan directory (to {}); not followed",
                                    real.display()
                                ),
                            );
                            continue;
                        }
                        (real.is_dir(), Some(real))
                    } else {
                        (kind.is_dir(), None)
                    };
                    // `plans/worlds/` holds the plans' rehearsal worlds, expectations and
                    // sample alerts (docs/worlds.md), not plans.
                    if is_dir && entry.file_name() == "worlds" {
                        continue;
                    }
                    if is_dir {
                        let real = match real {
                            Some(r) => r,
                            None => path.canonicalize().unwrap_or_else(|_| path.clone()),
                        };
                        // A directory already searched (a link back up the tree) is not searched again.
                        if depth < MAX_DEPTH && visited.insert(real) {
                            stack.push((path, depth + 1));
                        }
                    } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                        if out.len() >= MAX_FILES {
                            too_many = true;
                            continue;
                        }
                        out.push(path);
                    }
                }
            }
        } else if p.exists() {
            out.push(p.clone());
        } else {
            walk_error(errors, p, "no such file or directory".into());
        }
    }
    if too_many {
        walk_error(
            errors,
            paths.first().map_or(Path::new(""), |p| p.as_path()),
            format!("more than {MAX_FILES} plan files; the rest were not read"),
        );
    }
    out.sort();
    out.dedup();
    out
}

/// Loads the plans of one file's text (one or many documents).
pub fn load_str(file: &Path, text: &str) -> (Vec<LoadedPlan>, Vec<LoadError>) {
    let mut plans = Vec::new();
    let mut errors = Vec::new();
    for (start_line, doc_text) in split_documents(text) {
        if doc_text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            continue;
        }
        let err = |line: usize, column: usize, message: String| LoadError {
            file: file.to_path_buf(),
            line: start_line + line.saturating_sub(1),
            column,
            message,
        };
        let header: Header = match serde_yaml::from_str(&doc_text) {
            Ok(h) => h,
            Err(e) => {
                let (l, c) = location(&e);
                errors.push(err(l, c, describe(&e, start_line)));
                continue;
            }
        };
        // Point at the offending top-level key, not at the document's first line (often a
        // comment).
        let at_key = |key: &str| top_level_key(&doc_text, key).unwrap_or((1, 1));
        let api_version = header.api_version.unwrap_or_default();
        if api_version != API_VERSION && api_version != NOVA_API_VERSION {
            let (l, c) = at_key("apiVersion");
            errors.push(err(
                l,
                c,
                format!(
                    "expected apiVersion {API_VERSION} (or Nova's {NOVA_API_VERSION}), found {:?}",
                    api_version
                ),
            ));
            continue;
        }
        if header.kind.as_deref() != Some("RecoveryPlan") {
            let (l, c) = at_key("kind");
            errors.push(err(
                l,
                c,
                format!(
                    "expected kind RecoveryPlan, found {:?}",
                    header.kind.unwrap_or_default()
                ),
            ));
            continue;
        }
        let doc: Document = match serde_yaml::from_str(&doc_text) {
            Ok(d) => d,
            Err(e) => {
                let (l, c) = location(&e);
                let mut message = describe(&e, start_line);
                if let Some(hint) = misplaced_key(&doc_text, &message, l, c, start_line) {
                    message.push_str(&hint);
                }
                errors.push(err(l, c, message));
                continue;
            }
        };
        let nova = doc.api_version == NOVA_API_VERSION;
        let Some(name) = doc.metadata.name.clone().filter(|n| !n.is_empty()) else {
            let (l, _) = at_key("metadata");
            errors.push(err(l, 1, "metadata.name is missing".into()));
            continue;
        };
        let mut spec = doc.spec;
        // A forEach's own steps count too.
        let steps: usize = spec
            .steps
            .iter()
            .chain(&spec.on_failure)
            .map(|s| 1 + s.for_each.as_ref().map_or(0, |f| f.steps.len()))
            .sum();
        if steps > MAX_STEPS {
            let (l, c) = at_key("spec");
            errors.push(err(
                l,
                c,
                format!("the plan has {steps} steps (with onFailure); at most {MAX_STEPS} are allowed"),
            ));
            continue;
        }
        if let Some(p) = spec.overridable_params.iter().find(|p| !spec.params.contains_key(*p)) {
            let (l, c) = at_key("spec");
            errors.push(err(
                l,
                c,
                format!("spec.overridableParams names {p:?}, which is not in spec.params"),
            ));
            continue;
        }
        // Only Nova plans may leave steps unnamed; in a recoverd.io plan validation reports it.
        if nova {
            name_unnamed_steps(&mut spec);
        }
        let mut plan = RecoveryPlan::new(&name, spec);
        plan.metadata = doc.metadata;
        if plan.metadata.namespace.is_none() {
            plan.metadata.namespace = Some("default".into());
        }
        let _ = doc.kind;
        plans.push(LoadedPlan {
            plan,
            source: Source {
                file: file.to_path_buf(),
                line: start_line,
                text: doc_text,
            },
            nova,
        });
    }
    (plans, errors)
}

/// A required key that serde reports missing is often there, but indented at the wrong level
/// (e.g. `outputKey:` at the step's level after its `readField:` mapping). Looks for `key:` after
/// the mapping that lacks it (at `line`/`column`, whose keys are indented `column - 1`), less
/// indented than that mapping's keys and before the next item of an enclosing list, and returns
/// a hint naming its line in the file. The error keeps pointing at the mapping that lacks it.
fn misplaced_key(text: &str, message: &str, line: usize, column: usize, start_line: usize) -> Option<String> {
    let (path, rest) = message.split_once(": missing field `")?;
    let key = rest.split('`').next()?;
    let parent = path.rsplit('.').next()?;
    let parent = parent.split('[').next().unwrap_or(parent);
    let indent = column.checked_sub(1)?;
    for (i, l) in text.lines().enumerate().skip(line) {
        let spaces = l.len() - l.trim_start_matches(' ').len();
        let content = &l[spaces..];
        if content.starts_with("- ") {
            if spaces < indent {
                return None;
            }
            continue;
        }
        if spaces < indent && content.starts_with(&format!("{key}:")) {
            return Some(format!(
                " (the `{key}:` at line {} column {} is outside `{parent}`: is it indented under the right key?)",
                start_line + i,
                spaces + 1
            ));
        }
    }
    None
}

/// Nova plans may leave steps unnamed: they become `step-1`, `step-2`… by position
/// (`on-failure-1`… for compensation steps).
fn name_unnamed_steps(spec: &mut RecoveryPlanSpec) {
    for (i, step) in spec.steps.iter_mut().enumerate() {
        if step.name.as_deref().is_none_or(str::is_empty) {
            step.name = Some(format!("step-{}", i + 1));
        }
    }
    for (i, step) in spec.on_failure.iter_mut().enumerate() {
        if step.name.as_deref().is_none_or(str::is_empty) {
            step.name = Some(format!("on-failure-{}", i + 1));
        }
    }
}

/// Splits a multi-document YAML text into (1-based start line, text) pairs.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        if line == "---" || line.starts_with("--- ") {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 2;
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push((start, current));
    docs
}

fn location(e: &serde_yaml::Error) -> (usize, usize) {
    e.location().map_or((1, 1), |l| (l.line(), l.column()))
}

/// The 1-based line of a top-level `key:` in a document, and the column of its value.
fn top_level_key(text: &str, key: &str) -> Option<(usize, usize)> {
    text.lines().enumerate().find_map(|(i, line)| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let value = rest.len() - rest.trim_start().len();
        Some((i + 1, key.len() + 2 + value))
    })
}

/// serde_yaml's message without the error's own "at line X column Y" (the location is given
/// separately); any other position it mentions ("while parsing a flow mapping at line 16
/// column 17") is made relative to the file, like the location. With a hint for the mistakes
/// people make most.
fn describe(e: &serde_yaml::Error, start_line: usize) -> String {
    static POSITION: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = POSITION.get_or_init(|| regex::Regex::new(r" at line (\d+) column (\d+)").unwrap());
    let own = e.location().map(|l| (l.line(), l.column()));
    let msg = e.to_string();
    let msg = re
        .replace_all(&msg, |c: &regex::Captures| {
            let line: usize = c[1].parse().unwrap_or(0);
            let column: usize = c[2].parse().unwrap_or(0);
            if own == Some((line, column)) {
                String::new()
            } else {
                format!(" at line {} column {column}", start_line + line.saturating_sub(1))
            }
        })
        .into_owned();
    if msg.contains("unknown field") {
        format!("{msg} (is it indented under the right key?)")
    } else if msg.contains("unknown variant") && msg.contains("readField") {
        format!("{msg} (unknown step type)")
    } else {
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: a}\nspec:\n  steps:\n  - name: pause\n    type: wait\n    wait: {duration: 1s}\n";

    #[test]
    fn the_steps_inside_a_for_each_count_towards_the_step_limit() {
        let mut text = "apiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: a}\nspec:\n  steps:\n  - name: each\n    type: forEach\n    forEach:\n      items: [a]\n      steps:\n".to_string();
        for i in 0..MAX_STEPS {
            text += &format!("      - {{name: s{i}, type: wait, wait: {{duration: 1ms}}}}\n");
        }
        let (plans, errors) = load_str(Path::new("p.yaml"), &text);
        assert!(plans.is_empty());
        assert!(
            errors[0].message.contains(&format!("{} steps", MAX_STEPS + 1)),
            "{errors:?}"
        );
    }

    #[test]
    fn one_bad_document_does_not_stop_the_others() {
        let text = format!("{GOOD}---\napiVersion: recoverd.io/v1alpha1\nkind: RecoveryPlan\nmetadata: {{name: b}}\nspec:\n  steps:\n  - name: x\n    type: explode\n---\n{}", GOOD.replace("name: a", "name: c"));
        let (plans, errors) = load_str(Path::new("p.yaml"), &text);
        assert_eq!(
            plans
                .iter()
                .map(|p| p.plan.metadata.name.clone().unwrap())
                .collect::<Vec<_>>(),
            ["a", "c"]
        );
        assert_eq!(errors.len(), 1);
        let e = &errors[0];
        assert_eq!((e.line, e.column), (16, 11), "{e}");
        assert!(e.message.contains("unknown variant `explode`"), "{e}");
        assert!(e.to_string().starts_with("p.yaml:16:11: "), "{e}");
    }

    #[test]
    fn nova_steps_get_positional_names_and_the_default_namespace() {
        let text = "apiVersion: recovery.elotl.co/v1alpha1\nkind: RecoveryPlan\nmetadata: {name: n}\nspec:\n  alertLabels: {app: x}\n  steps:\n  - type: wait\n    wait: {duration: 1s}\n  - type: wait\n    wait: {duration: 1s}\n";
        let (plans, errors) = load_str(Path::new("n.yaml"), text);
        assert!(errors.is_empty(), "{errors:?}");
        let p = &plans[0];
        assert!(p.nova);
        assert_eq!(p.plan.metadata.namespace.as_deref(), Some("default"));
        let names: Vec<_> = p.plan.spec.steps.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["step-1", "step-2"]);
    }

    #[test]
    fn a_wrong_kind_is_named() {
        let (_, errors) = load_str(
            Path::new("x.yaml"),
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        );
        assert!(
            errors[0].message.contains("expected apiVersion recoverd.io/v1alpha1"),
            "{}",
            errors[0]
        );
    }
}
