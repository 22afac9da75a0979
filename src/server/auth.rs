//! Bearer-token authentication: tokens read from a file (one per line, `#` comments), compared
//! in constant time.

use std::path::Path;

use subtle::ConstantTimeEq;

#[derive(Clone, Debug, Default)]
pub struct Tokens {
    tokens: Vec<Vec<u8>>,
}

impl Tokens {
    pub fn from_file(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let tokens: Vec<Vec<u8>> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| l.as_bytes().to_vec())
            .collect();
        if tokens.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} holds no token", path.display()),
            ));
        }
        Ok(Tokens { tokens })
    }

    pub fn from_list(tokens: &[&str]) -> Self {
        Tokens {
            tokens: tokens.iter().map(|t| t.as_bytes().to_vec()).collect(),
        }
    }

    /// No tokens configured: every request is allowed (only for loopback use; `serve` warns).
    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Whether an `Authorization` header value carries one of the tokens.
    pub fn allows(&self, header: Option<&str>) -> bool {
        if self.is_open() {
            return true;
        }
        let Some(given) = header.and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        }) else {
            return false;
        };
        let given = given.trim().as_bytes();
        // Check every token so the time taken does not say which one nearly matched.
        self.tokens
            .iter()
            .fold(false, |ok, t| ok | bool::from(t.as_slice().ct_eq(given)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_listed_bearer_token_is_allowed() {
        let t = Tokens::from_list(&["abc", "def"]);
        assert!(t.allows(Some("Bearer def")));
        assert!(!t.allows(Some("Bearer de")));
        assert!(!t.allows(Some("Basic def")));
        assert!(!t.allows(None));
    }
}
