//! Backends operators add at runtime (`ctl backend-add`, the remote API):
//! held to the rules a `[[service.backend]]` of the file is held to, against
//! the running config, so the file and the runtime additions never disagree
//! about what a valid backend is.

use bg_lb_common::maps::MAX_BACKENDS;

use super::{
    BackendConfig, Config, ServiceConfig,
    services::{WEIGHT_RANGE, backend_problem, family_problem},
    values::endpoint_problem,
};

/// Why `backend` cannot join `service` of `config`, if it cannot.
pub fn added_backend_problem(config: &Config, service: &ServiceConfig, backend: &BackendConfig) -> Option<String> {
    let address = backend.address;
    if let Some(problem) = endpoint_problem(address) {
        return Some(format!("address {address}: {problem}"));
    }
    if !WEIGHT_RANGE.contains(&i64::from(backend.weight)) {
        return Some(format!(
            "weight {}: must be in {}..={}",
            backend.weight,
            WEIGHT_RANGE.start(),
            WEIGHT_RANGE.end()
        ));
    }
    if service.backends.iter().any(|b| b.address == address) {
        return Some(format!("duplicate backend {address} in service {:?}", service.name));
    }
    let total: usize = config.services.iter().map(|s| s.backends.len()).sum();
    if total >= MAX_BACKENDS as usize {
        return Some(format!("too many backends: at most {MAX_BACKENDS} across all services"));
    }
    family_problem(service.vips.iter().copied(), backend)
        .or_else(|| backend_problem(service.forwarding, service.vip(), backend))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::ratio::Pool;

    fn config(service_lines: &str) -> Config {
        let text = format!(
            "interface = \"eth0\"\nsnat_address = \"10.0.0.1\"\n[[service]]\nname = \"web\"\n\
             vip = \"10.0.0.100:80\"\n{service_lines}\n[[service.backend]]\npool = \"blue\"\n\
             address = \"10.0.1.1:80\"\n"
        );
        super::super::parse(Path::new("test.toml"), &text).unwrap()
    }

    fn problem(config: &Config, address: &str, weight: u32) -> Option<String> {
        let backend = BackendConfig {
            pool: Pool::Green,
            address: address.parse().unwrap(),
            weight,
        };
        added_backend_problem(config, &config.services[0], &backend)
    }

    #[test]
    fn a_backend_the_file_could_list_is_accepted() {
        assert_eq!(problem(&config(""), "10.0.1.2:8080", 100), None);
    }

    #[test]
    fn the_file_rules_refuse_an_added_backend_with_their_reason() {
        let web = config("");
        let cases = [
            ("0.0.0.0:80", 100, "0.0.0.0 is not an address"),
            ("10.0.1.2:0", 100, "port 0 is not allowed"),
            ("10.0.1.2:80", 1001, "weight 1001: must be in 0..=1000"),
            ("10.0.1.1:80", 100, "duplicate backend 10.0.1.1:80"),
        ];
        for (address, weight, reason) in cases {
            let why = problem(&web, address, weight).unwrap_or_else(|| panic!("{address} accepted"));
            assert!(why.contains(reason), "{address}: {why}");
        }
        let dsr = config("forwarding = \"dsr\"\nsyn_proxy = \"off\"");
        let why = problem(&dsr, "10.0.1.2:8080", 100).unwrap();
        assert!(why.contains("must listen on the vip's port 80"), "{why}");
        assert_eq!(problem(&dsr, "10.0.1.2:80", 100), None);
    }

    #[test]
    fn an_added_backend_counts_against_the_backend_budget() {
        let mut full = config("");
        let filler = full.services[0].backends[0].clone();
        full.services[0].backends = vec![filler; MAX_BACKENDS as usize];
        let why = problem(&full, "10.0.1.2:80", 100).unwrap();
        assert!(why.contains("too many backends"), "{why}");
    }
}
