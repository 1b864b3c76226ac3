//! The console's sessions: a CSRF token issued to each page that signs in,
//! required (header [`CSRF_HEADER`]) on every action it sends. A bearer
//! token in a header already keeps other sites from forging requests (a
//! browser never adds it by itself); the CSRF token is a second check that
//! holds even if a token leaks into a cookie or proxy that adds it.

use std::{
    collections::VecDeque,
    fs::File,
    io::Read as _,
    sync::Mutex,
    time::{Duration, Instant},
};

use subtle::ConstantTimeEq as _;

use crate::api::auth::Role;

/// The header an action's CSRF token travels in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Sessions kept at once per role; signing in past this forgets that role's
/// oldest. Per role, so a read-only token signing in over and over cannot
/// push the admins' sessions out.
const MAX_SESSIONS: usize = 256;
/// A session's CSRF token is refused after this long: sign in again.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The CSRF tokens issued, each for the role of the token that signed in.
#[derive(Default)]
pub struct Sessions {
    issued: Mutex<VecDeque<Session>>,
}

struct Session {
    csrf: String,
    role: Role,
    at: Instant,
}

impl Sessions {
    /// A new session for `role`: its CSRF token (32 random bytes, hex).
    pub fn open(&self, role: Role) -> std::io::Result<String> {
        let mut random = [0u8; 32];
        File::open("/dev/urandom")?.read_exact(&mut random)?;
        let csrf: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        issued.retain(|s| s.at.elapsed() < SESSION_LIFETIME);
        if issued.iter().filter(|s| s.role == role).count() >= MAX_SESSIONS
            && let Some(oldest) = issued.iter().position(|s| s.role == role)
        {
            issued.remove(oldest);
        }
        issued.push_back(Session {
            csrf: csrf.clone(),
            role,
            at: Instant::now(),
        });
        Ok(csrf)
    }

    /// Whether `csrf` is a live session's token, issued for `role`. Every
    /// session is compared, whole, so the time taken tells nothing.
    pub fn check(&self, role: Role, csrf: Option<&[u8]>) -> bool {
        let Some(csrf) = csrf else { return false };
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        issued.retain(|s| s.at.elapsed() < SESSION_LIFETIME);
        issued.iter().fold(false, |found, s| {
            let same = bool::from(s.csrf.as_bytes().ct_eq(csrf));
            found | (same && s.role == role)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_issued_token_for_the_same_role_passes() {
        let sessions = Sessions::default();
        let admin = sessions.open(Role::Admin).unwrap();
        let viewer = sessions.open(Role::ReadOnly).unwrap();
        assert_eq!(admin.len(), 64);
        assert_ne!(admin, viewer);
        assert!(sessions.check(Role::Admin, Some(admin.as_bytes())));
        assert!(sessions.check(Role::ReadOnly, Some(viewer.as_bytes())));
        assert!(!sessions.check(Role::Admin, Some(viewer.as_bytes())), "another role's");
        assert!(!sessions.check(Role::Admin, None));
        assert!(!sessions.check(Role::Admin, Some(b"")));
        assert!(!sessions.check(Role::Admin, Some(&admin.as_bytes()[..63])));
    }

    #[test]
    fn the_oldest_session_is_forgotten_past_the_cap() {
        let sessions = Sessions::default();
        let first = sessions.open(Role::Admin).unwrap();
        for _ in 0..MAX_SESSIONS {
            sessions.open(Role::Admin).unwrap();
        }
        assert!(!sessions.check(Role::Admin, Some(first.as_bytes())));
    }

    #[test]
    fn read_only_sign_ins_past_the_cap_never_forget_an_admin_session() {
        let sessions = Sessions::default();
        let admin = sessions.open(Role::Admin).unwrap();
        let first_viewer = sessions.open(Role::ReadOnly).unwrap();
        for _ in 0..2 * MAX_SESSIONS {
            sessions.open(Role::ReadOnly).unwrap();
        }
        assert!(sessions.check(Role::Admin, Some(admin.as_bytes())));
        assert!(!sessions.check(Role::ReadOnly, Some(first_viewer.as_bytes())));
    }
}
