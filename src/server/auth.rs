//! Bearer-token authentication and the three token roles (I/O edge: reads token files).
//!
//! Tokens are read from files (one per line, `#` comments) and compared in constant time. A file
//! is read again when it changes on disk (a mounted Secret is updated in place), so tokens rotate
//! without a restart; a changed file that is no longer valid keeps the tokens it had.
//!
//! The roles (README "Token roles"):
//! - **alert sender** (`--token-file`, what Alertmanager holds): `POST /api/v1/alerts`.
//! - **operator** (`--operator-token-file`): read plans and runs, trigger plans.
//! - **approver** (`--approver-token-file`): everything an operator may, and approve, cancel
//!   and resume runs.
//!
//! With neither an operator nor an approver file, the `--token-file` tokens hold every role (one
//! token for a small setup). Once either is given, the alert sender may only deliver alerts;
//! without an approver file, operators decide about runs.

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use subtle::ConstantTimeEq;

/// The shortest token `serve` accepts from a file.
pub const MIN_TOKEN_BYTES: usize = 32;

/// Tokens that appear in examples and must never guard a real receiver.
const PLACEHOLDERS: &[&str] = &[
    "change-me",
    "changeme",
    "change_me",
    "replace-me",
    "replaceme",
    "secret",
    "token",
    "password",
    "example",
    "example-token",
    "test-token",
    "your-token-here",
    "<token>",
];

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("failed to read token file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("token file {path} holds no token")]
    Empty { path: String },
    #[error("token file {path} line {line}: the token is a placeholder from an example ({shown:?}); generate one, e.g. `head -c 32 /dev/urandom | base64 > {path}`")]
    Placeholder { path: String, line: usize, shown: String },
    #[error("token file {path} line {line}: the token is {len} bytes; at least {MIN_TOKEN_BYTES} are needed (e.g. `head -c 32 /dev/urandom | base64 > {path}`)")]
    TooShort { path: String, line: usize, len: usize },
}

type Signature = Option<(SystemTime, u64, u64)>;

fn signature(path: &Path) -> Signature {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

#[derive(Debug, Default)]
struct Loaded {
    tokens: Vec<Vec<u8>>,
    signature: Signature,
}

/// A set of bearer tokens, optionally backed by a file that is re-read when it changes.
/// Cheap to clone (the router's state holds three, and is cloned for every request).
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    inner: Arc<RwLock<Loaded>>,
    file: Option<Arc<Path>>,
}

fn parse(path: &Path, text: &str) -> Result<Vec<Vec<u8>>, TokenError> {
    let shown = path.display().to_string();
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if PLACEHOLDERS.iter().any(|p| t.eq_ignore_ascii_case(p)) {
            return Err(TokenError::Placeholder {
                path: shown,
                line: i + 1,
                shown: t.to_string(),
            });
        }
        if t.len() < MIN_TOKEN_BYTES {
            return Err(TokenError::TooShort {
                path: shown,
                line: i + 1,
                len: t.len(),
            });
        }
        tokens.push(t.as_bytes().to_vec());
    }
    if tokens.is_empty() {
        return Err(TokenError::Empty { path: shown });
    }
    Ok(tokens)
}

fn read(path: &Path) -> Result<Loaded, TokenError> {
    let signature = signature(path);
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(Loaded {
        tokens: parse(path, &text)?,
        signature,
    })
}

impl Tokens {
    /// Reads tokens from a file; a token shorter than [`MIN_TOKEN_BYTES`] or a known
    /// placeholder is an error.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        Ok(Tokens {
            inner: Arc::new(RwLock::new(read(path)?)),
            file: Some(Arc::from(path)),
        })
    }

    /// Tokens given in code (tests, the demo); never re-read, not length-checked.
    pub fn from_list(tokens: &[&str]) -> Self {
        Tokens {
            inner: Arc::new(RwLock::new(Loaded {
                tokens: tokens.iter().map(|t| t.as_bytes().to_vec()).collect(),
                signature: None,
            })),
            file: None,
        }
    }

    /// Reads the file again if it changed on disk. Returns `Ok(true)` when the tokens changed;
    /// an error (the new file is invalid) keeps the tokens there were.
    pub fn reload(&self) -> Result<bool, TokenError> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let now = signature(path);
        if now == self.inner.read().unwrap_or_else(PoisonError::into_inner).signature {
            return Ok(false);
        }
        let loaded = match read(path) {
            Ok(l) => l,
            Err(e) => {
                // Do not report the same broken file every tick.
                self.inner.write().unwrap_or_else(PoisonError::into_inner).signature = now;
                return Err(e);
            }
        };
        *self.inner.write().unwrap_or_else(PoisonError::into_inner) = loaded;
        Ok(true)
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// No tokens configured: every request is allowed (only for loopback use; `serve` warns).
    pub fn is_open(&self) -> bool {
        self.file.is_none()
            && self
                .inner
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .tokens
                .is_empty()
    }

    /// Whether an `Authorization` header value carries one of the tokens. The scheme is
    /// case-insensitive (RFC 7235).
    pub fn allows(&self, header: Option<&str>) -> bool {
        if self.is_open() {
            return true;
        }
        self.holds(header)
    }

    /// Like [`Tokens::allows`], but an open set holds nothing.
    fn holds(&self, header: Option<&str>) -> bool {
        let Some(given) = header.and_then(bearer) else {
            return false;
        };
        let given = given.as_bytes();
        // Check every token so the time taken does not say which one nearly matched.
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .tokens
            .iter()
            .fold(false, |ok, t| ok | bool::from(t.as_slice().ct_eq(given)))
    }
}

/// The credentials of an `Authorization: Bearer …` header, whatever the scheme's case.
fn bearer(header: &str) -> Option<&str> {
    let (scheme, rest) = header.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// What a request may do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Roles {
    pub alert_sender: bool,
    pub operator: bool,
    pub approver: bool,
}

impl Roles {
    pub fn any(self) -> bool {
        self.alert_sender || self.operator || self.approver
    }
}

/// The tokens of every role.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    pub alert_senders: Tokens,
    pub operators: Option<Tokens>,
    pub approvers: Option<Tokens>,
}

impl Auth {
    /// The roles the request's `Authorization` header grants.
    pub fn roles(&self, header: Option<&str>) -> Roles {
        let sender = self.alert_senders.allows(header);
        let split = self.operators.is_some() || self.approvers.is_some();
        let operator = self.operators.as_ref().is_some_and(|t| t.holds(header));
        let approver = self.approvers.as_ref().is_some_and(|t| t.holds(header));
        if !split {
            return Roles {
                alert_sender: sender,
                operator: sender,
                approver: sender,
            };
        }
        Roles {
            alert_sender: sender,
            operator: operator || approver,
            approver: approver || (self.approvers.is_none() && operator),
        }
    }

    /// Every token set backed by a file.
    pub fn all(&self) -> impl Iterator<Item = &Tokens> {
        std::iter::once(&self.alert_senders)
            .chain(self.operators.as_ref())
            .chain(self.approvers.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn only_a_listed_bearer_token_is_allowed_whatever_the_schemes_case() {
        let t = Tokens::from_list(&["abc", "def"]);
        assert!(t.allows(Some("Bearer def")));
        assert!(t.allows(Some("bearer def")));
        assert!(t.allows(Some("BEARER def")));
        assert!(t.allows(Some("BeArEr  def ")));
        assert!(!t.allows(Some("Bearer de")));
        assert!(!t.allows(Some("Basic def")));
        assert!(!t.allows(Some("Bearerdef")));
        assert!(!t.allows(None));
    }

    #[test]
    fn short_and_placeholder_tokens_are_refused_with_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        for (text, want) in [
            ("change-me\n", "placeholder"),
            ("# a comment\nCHANGEME\n", "placeholder"),
            ("short-token\n", "11 bytes; at least 32"),
            ("\n# nothing\n", "holds no token"),
        ] {
            std::fs::write(&f, text).unwrap();
            let err = Tokens::from_file(&f).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains("short-token"), "the token is not echoed: {err}");
        }
        std::fs::write(&f, format!("{A}\n")).unwrap();
        assert!(Tokens::from_file(&f).unwrap().allows(Some(&format!("Bearer {A}"))));
    }

    #[test]
    fn a_token_file_is_read_again_when_it_changes_and_a_bad_change_keeps_the_old_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, format!("{A}\n")).unwrap();
        let t = Tokens::from_file(&f).unwrap();
        assert!(!t.reload().unwrap(), "unchanged");
        let b = "b".repeat(40);
        // A new file (as a Secret update swaps it), so the inode differs even within one mtime tick.
        std::fs::write(dir.path().join("new"), format!("{b}\n")).unwrap();
        std::fs::rename(dir.path().join("new"), &f).unwrap();
        assert!(t.reload().unwrap());
        assert!(t.allows(Some(&format!("Bearer {b}"))));
        assert!(!t.allows(Some(&format!("Bearer {A}"))));
        std::fs::write(dir.path().join("new"), "change-me\n").unwrap();
        std::fs::rename(dir.path().join("new"), &f).unwrap();
        assert!(t.reload().is_err());
        assert!(t.allows(Some(&format!("Bearer {b}"))), "kept the valid tokens");
    }

    #[test]
    fn roles_split_once_operator_or_approver_tokens_are_given() {
        let hdr = |t: &str| format!("Bearer {t}");
        let one = Auth {
            alert_senders: Tokens::from_list(&["am"]),
            ..Default::default()
        };
        let all = Roles {
            alert_sender: true,
            operator: true,
            approver: true,
        };
        assert_eq!(one.roles(Some(&hdr("am"))), all);
        assert_eq!(one.roles(Some(&hdr("x"))), Roles::default());
        let split = Auth {
            alert_senders: Tokens::from_list(&["am"]),
            operators: Some(Tokens::from_list(&["op"])),
            approvers: Some(Tokens::from_list(&["ap"])),
        };
        assert_eq!(
            split.roles(Some(&hdr("am"))),
            Roles {
                alert_sender: true,
                ..Default::default()
            }
        );
        assert_eq!(
            split.roles(Some(&hdr("op"))),
            Roles {
                operator: true,
                ..Default::default()
            }
        );
        assert_eq!(
            split.roles(Some(&hdr("ap"))),
            Roles {
                operator: true,
                approver: true,
                ..Default::default()
            }
        );
        let no_approvers = Auth {
            approvers: None,
            ..split
        };
        assert!(no_approvers.roles(Some(&hdr("op"))).approver);
        assert!(!no_approvers.roles(Some(&hdr("am"))).operator);
    }
}
