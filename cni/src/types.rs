//! The CNI protocol's JSON: results, errors and versions (CNI spec 1.1.0, with the 0.3.x /
//! 0.4.0 result form for older callers).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The versions this plugin answers, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// CNI error codes (spec §"Error").
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD.
    pub const NOT_AVAILABLE: u32 = 50;
    /// Twill: IPAM could not allocate.
    pub const IPAM_FAILURE: u32 = 100;
    /// Twill: the kernel refused (interfaces, addresses, routes).
    pub const DATAPLANE_FAILURE: u32 = 101;
    /// Twill: CHECK found the pod's network not as ADD left it.
    pub const CHECK_FAILED: u32 = 102;
}

/// A CNI error: what a plugin prints on stdout and exits non-zero with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    /// The CNI error code.
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// Details: what exactly was wrong.
    pub details: String,
}

impl CniError {
    /// An error with a code, message and details.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// A configuration key with a bad value (code 7).
    pub fn config(key: &str, reason: impl Into<String>) -> CniError {
        CniError::new(
            code::INVALID_CONFIG,
            format!("invalid network configuration: {key}"),
            reason,
        )
    }

    /// A bad CNI_* environment variable (code 4).
    pub fn environment(variable: &str, reason: impl Into<String>) -> CniError {
        CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("invalid environment variable {variable}"),
            reason,
        )
    }

    /// The JSON the plugin prints.
    pub fn to_json(&self, version: &str) -> Value {
        json!({"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}

/// An interface of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Its MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The network namespace path it is in; absent for the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// An address of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// The address with its prefix length.
    pub address: IpNet,
    /// The gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// An ADD result (1.0.0 form); a delegated IPAM plugin's result has no interfaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// The version the result is written in.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// Interfaces created.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS settings, passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Value>,
}

impl CniResult {
    /// The result in the form a caller of `version` reads: 0.3.x and 0.4.0 give each
    /// address a `version` field; 1.x do not.
    pub fn to_json(&self, version: &str) -> Value {
        let mut value = serde_json::to_value(self).expect("results serialize");
        value["cniVersion"] = json!(version);
        if version.starts_with("0.") {
            if let Some(ips) = value["ips"].as_array_mut() {
                for ip in ips {
                    let family = if ip["address"].as_str().is_some_and(|a| a.contains(':')) {
                        "6"
                    } else {
                        "4"
                    };
                    ip["version"] = json!(family);
                }
            }
        }
        value
    }

    /// Reads a result of any supported version (a `prevResult` or a delegated plugin's
    /// output); 0.x results' `version` fields are dropped.
    pub fn from_json(value: &Value) -> Result<CniResult, CniError> {
        let mut value = value.clone();
        if let Some(ips) = value.get_mut("ips").and_then(Value::as_array_mut) {
            for ip in ips {
                if let Some(object) = ip.as_object_mut() {
                    object.remove("version");
                }
            }
        }
        serde_json::from_value(value).map_err(|err| {
            CniError::new(
                code::DECODE_FAILURE,
                "cannot decode a CNI result",
                err.to_string(),
            )
        })
    }
}

/// The VERSION answer.
pub fn version_json(version: &str) -> Value {
    json!({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS})
}

/// Checks that the caller's `cniVersion` is one this plugin speaks.
pub fn check_version(version: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("incompatible CNI version {version:?}"),
            format!("this plugin supports {}", SUPPORTED_VERSIONS.join(", ")),
        ))
    }
}

/// A version as numbers, for comparison (`0.4.0` → [0, 4, 0]).
fn numbers(version: &str) -> Vec<u32> {
    version
        .split('.')
        .map(|part| part.parse().unwrap_or(0))
        .collect()
}

/// Commands newer than the caller's version are refused (code 1): CHECK came with 0.4.0, GC
/// and STATUS with 1.1.0.
pub fn check_command_version(
    command: crate::config::Command,
    version: &str,
) -> Result<(), CniError> {
    use crate::config::Command;
    let needed = match command {
        Command::Check => "0.4.0",
        Command::Gc | Command::Status => "1.1.0",
        _ => return Ok(()),
    };
    if numbers(version) >= numbers(needed) {
        return Ok(());
    }
    Err(CniError::new(
        code::INCOMPATIBLE_VERSION,
        format!("{command:?} needs cniVersion {needed} or later"),
        format!("the configuration says {version}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> CniResult {
        CniResult {
            cni_version: "1.0.0".into(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: Some("02:00:00:00:00:01".into()),
                mtu: None,
                sandbox: Some("/run/netns/p".into()),
            }],
            ips: vec![
                IpConfig {
                    address: "10.90.0.5/32".parse().unwrap(),
                    gateway: None,
                    interface: Some(0),
                },
                IpConfig {
                    address: "fd00:90::5/128".parse().unwrap(),
                    gateway: None,
                    interface: Some(0),
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("169.254.1.1".parse().unwrap()),
            }],
            dns: None,
        }
    }

    #[test]
    fn old_callers_get_address_versions_and_new_ones_do_not() {
        // The spec's 0.4.0 example result carries "version": "4" per address; 1.0.0 dropped it.
        let old = result().to_json("0.4.0");
        assert_eq!(old["cniVersion"], "0.4.0");
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
        let new = result().to_json("1.0.0");
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["ips"][0]["address"], "10.90.0.5/32");
        assert_eq!(CniResult::from_json(&old).unwrap().ips, result().ips);
    }

    #[test]
    fn commands_newer_than_the_callers_version_are_refused() {
        use crate::config::Command;
        assert_eq!(
            check_command_version(Command::Check, "0.3.1")
                .unwrap_err()
                .code,
            1
        );
        assert!(check_command_version(Command::Check, "0.4.0").is_ok());
        assert_eq!(
            check_command_version(Command::Gc, "1.0.0")
                .unwrap_err()
                .code,
            1
        );
        assert!(check_command_version(Command::Status, "1.1.0").is_ok());
        assert!(check_command_version(Command::Add, "0.3.0").is_ok());
    }

    #[test]
    fn unknown_versions_are_refused_with_code_1() {
        assert_eq!(check_version("0.2.0").unwrap_err().code, 1);
        assert!(check_version("1.1.0").is_ok());
    }
}
