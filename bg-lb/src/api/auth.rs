//! Who may use the remote API: bearer tokens read from files, each with a
//! [`Role`], compared in constant time; and the log of refused credentials,
//! at most a line every few seconds so a client guessing tokens cannot
//! flood the journal.

use std::{
    fs,
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use subtle::{Choice, ConstantTimeEq as _};

use super::ApiError;
use crate::config::ApiConfig;

/// A token shorter than this is refused: 16 random bytes, hex, are 32.
pub const MIN_TOKEN_LEN: usize = 16;
/// Refused requests are logged at most once per this period.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `status` and `flows`: what a console for onlookers needs.
    ReadOnly,
    /// Every command the admin socket takes.
    Admin,
}

/// The tokens the listener accepts.
pub struct Tokens {
    admin: Vec<u8>,
    read_only: Option<Vec<u8>>,
}

impl Tokens {
    pub fn new(admin: Vec<u8>, read_only: Option<Vec<u8>>) -> Self {
        Tokens { admin, read_only }
    }

    /// Reads the token files `[api]` names.
    pub fn load(config: &ApiConfig) -> Result<Self, ApiError> {
        let read_only = config.read_only_token_file.as_deref().map(read_token).transpose()?;
        Ok(Tokens::new(read_token(&config.token_file)?, read_only))
    }

    /// The role an `Authorization` header value grants: `Bearer TOKEN` with
    /// a token of ours. Every token is compared, whole, whichever matches,
    /// so the time taken tells nothing of a token but its length.
    pub fn role(&self, authorization: Option<&[u8]>) -> Option<Role> {
        let token = authorization.and_then(bearer)?;
        let admin = token.ct_eq(&self.admin);
        let read_only = self.read_only.as_ref().map_or(Choice::from(0), |t| token.ct_eq(t));
        if bool::from(admin) {
            Some(Role::Admin)
        } else if bool::from(read_only) {
            Some(Role::ReadOnly)
        } else {
            None
        }
    }
}

/// The token of `Bearer TOKEN` (the scheme is case-insensitive, RFC 9110).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then_some(token)
}

/// A token file: the token, without surrounding whitespace. One that other
/// users can read, or too short to resist guessing, is refused.
fn read_token(path: &Path) -> Result<Vec<u8>, ApiError> {
    let io = |cause| ApiError::TokenFile {
        path: path.to_owned(),
        cause,
    };
    let mode = fs::metadata(path).map_err(io)?.permissions().mode();
    if mode & 0o007 != 0 {
        return Err(ApiError::TokenReadableByOthers { path: path.to_owned() });
    }
    let token = fs::read(path).map_err(io)?.trim_ascii().to_vec();
    if token.len() < MIN_TOKEN_LEN || token.iter().any(|b| !b.is_ascii_graphic()) {
        return Err(ApiError::BadToken { path: path.to_owned() });
    }
    Ok(token)
}

/// Logs refused requests: the first at once, then at most one line per
/// [`REFUSAL_LOG_EVERY`] with how many were refused since.
#[derive(Default)]
pub struct RefusalLog {
    /// When the last line was written, and the refusals since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl RefusalLog {
    pub fn refused(&self, peer: SocketAddr, why: &str) {
        let Ok(mut state) = self.state.lock() else { return };
        let (last, unlogged) = &mut *state;
        *unlogged += 1;
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_EVERY) {
            return;
        }
        tracing::warn!(%peer, reason = why, refused = *unlogged, "remote API request refused (refused is the count since the last such line)");
        *last = Some(now);
        *unlogged = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(
            b"admin-token-0123456789".to_vec(),
            Some(b"viewer-token-0123456789".to_vec()),
        )
    }

    #[test]
    fn each_token_grants_its_role_and_nothing_else_grants_one() {
        let t = tokens();
        assert_eq!(t.role(Some(b"Bearer admin-token-0123456789")), Some(Role::Admin));
        assert_eq!(t.role(Some(b"bearer viewer-token-0123456789")), Some(Role::ReadOnly));
        for bad in [
            &b"Bearer admin-token-012345678"[..],
            b"Bearer admin-token-01234567890",
            b"Bearer ",
            b"Basic admin-token-0123456789",
            b"admin-token-0123456789",
            b"",
        ] {
            assert_eq!(t.role(Some(bad)), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(t.role(None), None);
        let admin_only = Tokens::new(b"admin-token-0123456789".to_vec(), None);
        assert_eq!(admin_only.role(Some(b"Bearer viewer-token-0123456789")), None);
    }

    #[test]
    fn token_files_must_be_private_and_long_enough() {
        let dir = std::env::temp_dir().join(format!("bglb-tokens-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str, mode: u32| {
            let path = dir.join(name);
            fs::write(&path, text).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            path
        };
        let good = write("good", "  0123456789abcdef0123\n", 0o640);
        assert_eq!(read_token(&good).unwrap(), b"0123456789abcdef0123");
        let open = write("open", "0123456789abcdef0123\n", 0o644);
        assert!(matches!(read_token(&open), Err(ApiError::TokenReadableByOthers { .. })));
        let short = write("short", "secret\n", 0o600);
        assert!(matches!(read_token(&short), Err(ApiError::BadToken { .. })));
        let spaced = write("spaced", "0123456789 abcdef0123\n", 0o600);
        assert!(matches!(read_token(&spaced), Err(ApiError::BadToken { .. })));
        assert!(matches!(
            read_token(&dir.join("absent")),
            Err(ApiError::TokenFile { .. })
        ));
        fs::remove_dir_all(dir).unwrap();
    }
}
