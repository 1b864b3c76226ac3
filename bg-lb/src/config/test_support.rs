//! Test documents and assertions shared by the config tests.

use std::path::Path;

use super::{BackendConfig, Config, parse};
use crate::ratio::Pool;

/// The top-level keys every test document needs: lines 1-2.
pub(super) const TOP: &str = "interface = \"eth0\"\nsnat_address = \"10.0.0.1\"\n";

/// A service without backends, to append service keys or `[[service.backend]]` tables to: lines 3-5 after TOP.
pub(super) const WEB: &str = "[[service]]\nname = \"web\"\nvip = \"10.0.0.100:80\"\n";

/// A blue backend, to append backend keys to: lines 6-8 after TOP and WEB.
pub(super) const BLUE: &str = "[[service.backend]]\npool = \"blue\"\naddress = \"10.0.1.1:80\"\n";

/// A second service, without backends.
pub(super) const API: &str = "[[service]]\nname = \"api\"\nvip = \"10.0.0.101:80\"\n";

pub(super) fn parse_ok(text: &str) -> Config {
    parse(Path::new("test.toml"), text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Expects `text` to be rejected on the one line marked `# <-`, with a message containing `needle`.
#[track_caller]
pub(super) fn assert_rejected(text: &str, needle: &str) {
    let marked: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("# <-"))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(marked.len(), 1, "mark exactly one line with `# <-`:\n{text}");
    let error = parse(Path::new("test.toml"), text).expect_err(text);
    assert_eq!(error.line(), Some(marked[0]), "wrong line for: {error}\n{text}");
    assert!(
        error.to_string().contains(needle),
        "{error:?} does not contain {needle:?}\n{text}"
    );
}

pub(super) fn backend(pool: Pool, address: &str, weight: u32) -> BackendConfig {
    BackendConfig {
        pool,
        address: address.parse().unwrap(),
        weight,
    }
}
