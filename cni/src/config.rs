//! The network configuration (stdin) and the CNI_* environment, read and checked before
//! anything changes. Unknown keys are ignored, as the spec asks; a known key with a bad value
//! is refused with code 7 naming the key; a bad CNI_* variable with code 4.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ipnet::IpNet;
use serde_json::Value;

use crate::types::{check_version, CniError};

/// The default datastore (as `twill-node` and `twillctl` use).
pub const DEFAULT_DATASTORE: &str = "sqlite:/var/lib/twill/twill.db";
/// Where twill-node's health endpoints listen on this node.
pub const DEFAULT_NODE_HEALTH: &str = "127.0.0.1:9099";
/// How long ADD waits for twill-node to program a new endpoint.
pub const DEFAULT_POLICY_SETUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The default machine-wide IPAM lock.
pub const DEFAULT_LOCK_FILE: &str = "/var/run/twill/ipam.lock";
/// Where twill-node writes the MTU pods should use, when the config names none.
pub const MTU_FILE: &str = "/var/lib/twill/mtu";

/// The `ipam` section as `twill-ipam` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// The IPAM plugin (`twill-ipam`, or another binary on CNI_PATH).
    pub plugin: String,
    /// Allocate an IPv4 address.
    pub assign_ipv4: bool,
    /// Allocate an IPv6 address.
    pub assign_ipv6: bool,
    /// Only these IPv4 pools (names or CIDRs).
    pub ipv4_pools: Vec<String>,
    /// Only these IPv6 pools.
    pub ipv6_pools: Vec<String>,
}

/// The network configuration of one plugin call.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// The caller's CNI version.
    pub cni_version: String,
    /// The network name (handles are `<name>.<containerID>`).
    pub name: String,
    /// Datastore URL.
    pub datastore: String,
    /// This node's name.
    pub nodename: String,
    /// MTU of the pod's interface.
    pub mtu: u32,
    /// `error`, `warn`, `info` or `debug`.
    pub log_level: String,
    /// Where logs go (none: standard error).
    pub log_file_path: Option<PathBuf>,
    /// The machine-wide IPAM lock.
    pub ipam_lock_file: PathBuf,
    /// Prefix of host-side interface names.
    pub interface_prefix: String,
    /// IPAM settings.
    pub ipam: IpamConfig,
    /// The previous plugin's result, when chained.
    pub prev_result: Option<Value>,
    /// GC: the attachments still in use (containerID, ifname).
    pub valid_attachments: Option<Vec<(String, String)>>,
    /// twill-node's health listener on this node (`node_health_address`); None
    /// (`"none"`) when no twill-node runs, so nothing enforces policy and nothing is waited
    /// for — only for using the plugin without Twill's policy.
    pub node_health: Option<String>,
    /// How long ADD waits for the new endpoint's policy (`policy_setup_timeout_seconds`,
    /// Calico's key; 0: no wait).
    pub policy_setup_timeout: std::time::Duration,
    /// The whole document, for delegating to another IPAM plugin.
    pub raw: Value,
}

/// What the configuration falls back to when it names no value (read by the edge).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fallbacks {
    /// `TWILL_DATASTORE` from the environment.
    pub datastore: Option<String>,
    /// The host name.
    pub hostname: Option<String>,
    /// The MTU twill-node wrote to [`MTU_FILE`].
    pub mtu: Option<u32>,
}

/// Reads the network configuration from the bytes on stdin.
pub fn parse_netconf(bytes: &[u8], fallbacks: &Fallbacks) -> Result<NetConf, CniError> {
    let raw: Value = serde_json::from_slice(bytes).map_err(|err| {
        CniError::new(
            crate::types::code::DECODE_FAILURE,
            "the network configuration is not JSON",
            err.to_string(),
        )
    })?;
    if !raw.is_object() {
        return Err(CniError::config(
            "(document)",
            "the network configuration must be a JSON object",
        ));
    }
    let cni_version = required_string(&raw, "cniVersion")?;
    check_version(&cni_version)?;
    let name = required_string(&raw, "name")?;
    let mut datastore = optional_string(&raw, "datastore")?
        .or_else(|| fallbacks.datastore.clone())
        .unwrap_or_else(|| DEFAULT_DATASTORE.to_string());
    // `"datastore": "kubernetes", "kubeconfig": PATH`: that kubeconfig (install-cni writes
    // one for the plugin from the pod's service account token).
    if let Some(kubeconfig) = optional_string(&raw, "kubeconfig")? {
        if datastore != "kubernetes" {
            return Err(CniError::config(
                "kubeconfig",
                "only with \"datastore\": \"kubernetes\"",
            ));
        }
        datastore = format!("kubernetes:{kubeconfig}");
    }
    if let Some(url) = calico_etcd(&raw)? {
        datastore = url;
    }
    twill_shared::datastore::DatastoreUrl::parse(&datastore)
        .map_err(|err| CniError::config("datastore", err.to_string()))?;
    let nodename = match optional_string(&raw, "nodename")? {
        Some(node) => node,
        None => fallbacks.hostname.clone().ok_or_else(|| {
            CniError::config("nodename", "absent, and the host name cannot be read")
        })?,
    };
    if nodename.is_empty() {
        return Err(CniError::config("nodename", "must not be empty"));
    }
    let mtu = match raw.get("mtu") {
        None | Some(Value::Null) => fallbacks.mtu.unwrap_or(1500),
        Some(value) => value
            .as_u64()
            .filter(|m| (68..=65535).contains(m))
            .ok_or_else(|| {
                CniError::config(
                    "mtu",
                    format!("{value} is not an MTU (a number from 68 to 65535)"),
                )
            })? as u32,
    };
    let log_level = optional_string(&raw, "log_level")?.unwrap_or_else(|| "info".into());
    if !["error", "warn", "warning", "info", "debug", "trace"]
        .contains(&log_level.to_ascii_lowercase().as_str())
    {
        return Err(CniError::config(
            "log_level",
            format!("{log_level:?} is not one of error, warn, info, debug"),
        ));
    }
    let interface_prefix =
        optional_string(&raw, "interface_prefix")?.unwrap_or_else(|| "tw".into());
    if interface_prefix.is_empty()
        || interface_prefix.len() > 4
        || !interface_prefix.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(CniError::config(
            "interface_prefix",
            "1 to 4 letters or digits",
        ));
    }
    let node_health = match optional_string(&raw, "node_health_address")? {
        Some(address) if address == "none" => None,
        Some(address) => {
            address.parse::<std::net::SocketAddr>().map_err(|_| {
                CniError::config(
                    "node_health_address",
                    format!("{address:?} is not ADDRESS:PORT or \"none\""),
                )
            })?;
            Some(address)
        }
        None => Some(DEFAULT_NODE_HEALTH.to_string()),
    };
    let policy_setup_timeout = match raw.get("policy_setup_timeout_seconds") {
        None | Some(Value::Null) => DEFAULT_POLICY_SETUP_TIMEOUT,
        Some(value) => value
            .as_u64()
            .map(std::time::Duration::from_secs)
            .ok_or_else(|| {
                CniError::config(
                    "policy_setup_timeout_seconds",
                    format!("{value} is not a number of seconds (0 or more)"),
                )
            })?,
    };
    Ok(NetConf {
        cni_version,
        name,
        datastore,
        nodename,
        mtu,
        log_level,
        log_file_path: optional_string(&raw, "log_file_path")?.map(PathBuf::from),
        ipam_lock_file: optional_string(&raw, "ipam_lock_file")?
            .unwrap_or_else(|| DEFAULT_LOCK_FILE.into())
            .into(),
        interface_prefix,
        ipam: parse_ipam(&raw)?,
        prev_result: raw.get("prevResult").cloned().filter(|v| !v.is_null()),
        valid_attachments: parse_attachments(&raw)?,
        node_health,
        policy_setup_timeout,
        raw,
    })
}

fn parse_ipam(raw: &Value) -> Result<IpamConfig, CniError> {
    let Some(section) = raw.get("ipam") else {
        return Err(CniError::config(
            "ipam",
            "required (e.g. {\"type\": \"twill-ipam\"})",
        ));
    };
    if !section.is_object() {
        return Err(CniError::config("ipam", "must be an object"));
    }
    let plugin = required_string(section, "type").map_err(|err| prefixed(err, "ipam."))?;
    let flag = |key: &str, default: bool| -> Result<bool, CniError> {
        match section.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::String(s)) if s == "true" => Ok(true),
            Some(Value::String(s)) if s == "false" => Ok(false),
            Some(other) => Err(CniError::config(
                &format!("ipam.{key}"),
                format!("{other} is not \"true\" or \"false\""),
            )),
        }
    };
    let pools = |key: &str| -> Result<Vec<String>, CniError> {
        let Some(value) = section.get(key).filter(|v| !v.is_null()) else {
            return Ok(Vec::new());
        };
        let list = value.as_array().ok_or_else(|| {
            CniError::config(
                &format!("ipam.{key}"),
                "must be a list of pool names or CIDRs",
            )
        })?;
        list.iter()
            .enumerate()
            .map(|(i, item)| {
                let text = item.as_str().ok_or_else(|| {
                    CniError::config(
                        &format!("ipam.{key}[{i}]"),
                        format!("{item} is not a string"),
                    )
                })?;
                if text.contains('/') && text.parse::<IpNet>().is_err() {
                    return Err(CniError::config(
                        &format!("ipam.{key}[{i}]"),
                        format!("{text:?} is not a CIDR"),
                    ));
                }
                Ok(text.to_string())
            })
            .collect()
    };
    let config = IpamConfig {
        plugin,
        assign_ipv4: flag("assign_ipv4", true)?,
        assign_ipv6: flag("assign_ipv6", false)?,
        ipv4_pools: pools("ipv4_pools")?,
        ipv6_pools: pools("ipv6_pools")?,
    };
    if !config.assign_ipv4 && !config.assign_ipv6 {
        return Err(CniError::config(
            "ipam.assign_ipv4",
            "assign_ipv4 and assign_ipv6 are both false: nothing to allocate",
        ));
    }
    Ok(config)
}

/// GC's attachments still in use: `cni.dev/valid-attachments` (CNI 1.1.0 as published
/// named it `cni.dev/attachments`; libcni sends both). None when the runtime sent neither.
fn parse_attachments(raw: &Value) -> Result<Option<Vec<(String, String)>>, CniError> {
    let Some(value) = raw
        .get("cni.dev/valid-attachments")
        .or_else(|| raw.get("cni.dev/attachments"))
    else {
        return Ok(None);
    };
    let list = value
        .as_array()
        .ok_or_else(|| CniError::config("cni.dev/valid-attachments", "must be a list"))?;
    list.iter()
        .enumerate()
        .map(|(i, item)| {
            let field = |name: &str| {
                item.get(name)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| {
                        CniError::config(
                            &format!("cni.dev/valid-attachments[{i}].{name}"),
                            "required string",
                        )
                    })
            };
            Ok((field("containerID")?, field("ifname")?))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn prefixed(mut err: CniError, prefix: &str) -> CniError {
    err.msg = err.msg.replace(": ", &format!(": {prefix}"));
    err
}

fn required_string(object: &Value, key: &str) -> Result<String, CniError> {
    optional_string(object, key)?.ok_or_else(|| CniError::config(key, "required"))
}

/// Calico's etcd keys, `etcd_endpoints` (`http[s]://HOST:PORT,…`) with `etcd_ca_cert_file`,
/// `etcd_cert_file` and `etcd_key_file`, as the datastore URL they name (`etcd://` or
/// `etcds://…?ca=…&cert=…&key=…`).
fn calico_etcd(raw: &Value) -> Result<Option<String>, CniError> {
    let files = [
        ("etcd_ca_cert_file", "ca"),
        ("etcd_cert_file", "cert"),
        ("etcd_key_file", "key"),
    ];
    let mut query = Vec::new();
    // Calico's etcd manifest writes the file keys empty when etcd has no TLS: empty is unset.
    let set = |key: &str| -> Result<Option<String>, CniError> {
        Ok(optional_string(raw, key)?.filter(|v| !v.trim().is_empty()))
    };
    for (key, parameter) in files {
        if let Some(path) = set(key)? {
            if path.contains(['&', '?', ',']) {
                return Err(CniError::config(
                    key,
                    "a path with &, ? or , cannot be used",
                ));
            }
            query.push(format!("{parameter}={path}"));
        }
    }
    let Some(endpoints) = set("etcd_endpoints")? else {
        if let Some((key, _)) = files
            .iter()
            .find(|(key, _)| !query.is_empty() && raw.get(*key).is_some())
        {
            return Err(CniError::config(key, "only with etcd_endpoints"));
        }
        return Ok(None);
    };
    let mut hosts = Vec::new();
    let mut secure = !query.is_empty();
    for endpoint in endpoints.split(',').map(str::trim) {
        let host = if let Some(host) = endpoint.strip_prefix("https://") {
            secure = true;
            host
        } else if let Some(host) = endpoint.strip_prefix("http://") {
            host
        } else {
            return Err(CniError::config(
                "etcd_endpoints",
                format!("{endpoint:?} is not http://HOST:PORT or https://HOST:PORT"),
            ));
        };
        hosts.push(host.trim_end_matches('/'));
    }
    Ok(Some(if secure {
        format!("etcds://{}?{}", hosts.join(","), query.join("&"))
    } else {
        format!("etcd://{}", hosts.join(","))
    }))
}

fn optional_string(object: &Value, key: &str) -> Result<Option<String>, CniError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(CniError::config(key, format!("{other} is not a string"))),
    }
}

/// The CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach.
    Add,
    /// Detach.
    Del,
    /// Verify.
    Check,
    /// Report supported versions.
    Version,
    /// Remove what no valid attachment uses (1.1.0).
    Gc,
    /// Say whether ADD can work (1.1.0).
    Status,
}

/// The CNI_* environment of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallArgs {
    /// The command.
    pub command: Command,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_NETNS.
    pub netns: PathBuf,
    /// CNI_IFNAME.
    pub ifname: String,
    /// CNI_ARGS, as key → value.
    pub args: BTreeMap<String, String>,
    /// CNI_PATH, the directories of plugins.
    pub path: Vec<PathBuf>,
}

impl CallArgs {
    /// The Kubernetes pod (K8S_POD_NAMESPACE, K8S_POD_NAME), if the runtime gave one.
    pub fn pod(&self) -> Option<(&str, &str)> {
        Some((
            self.args.get("K8S_POD_NAMESPACE")?,
            self.args.get("K8S_POD_NAME")?,
        ))
    }
}

/// Reads the command alone (VERSION needs nothing else).
pub fn parse_command(environment: &dyn Fn(&str) -> Option<String>) -> Result<Command, CniError> {
    let text = environment("CNI_COMMAND")
        .ok_or_else(|| CniError::environment("CNI_COMMAND", "not set"))?;
    Ok(match text.as_str() {
        "ADD" => Command::Add,
        "DEL" => Command::Del,
        "CHECK" => Command::Check,
        "VERSION" => Command::Version,
        "GC" => Command::Gc,
        "STATUS" => Command::Status,
        other => {
            return Err(CniError::environment(
                "CNI_COMMAND",
                format!("{other:?} is not ADD, DEL, CHECK, VERSION, GC or STATUS"),
            ))
        }
    })
}

/// Reads and checks the CNI_* variables a command needs, before anything changes.
pub fn parse_call(
    command: Command,
    environment: &dyn Fn(&str) -> Option<String>,
) -> Result<CallArgs, CniError> {
    let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
    let get = |name: &str| environment(name).filter(|v| !v.is_empty());
    let container_id = match get("CNI_CONTAINERID") {
        Some(id) => {
            check_container_id(&id)?;
            id
        }
        None if needs_container => return Err(CniError::environment("CNI_CONTAINERID", "not set")),
        None => String::new(),
    };
    let netns = match get("CNI_NETNS") {
        Some(path) => {
            check_netns_path(&path)?;
            PathBuf::from(path)
        }
        None if matches!(command, Command::Add | Command::Check) => {
            return Err(CniError::environment("CNI_NETNS", "not set"))
        }
        None => PathBuf::new(),
    };
    let ifname = match get("CNI_IFNAME") {
        Some(name) => {
            check_ifname(&name)?;
            name
        }
        None if needs_container => return Err(CniError::environment("CNI_IFNAME", "not set")),
        None => String::new(),
    };
    let mut args = BTreeMap::new();
    for pair in get("CNI_ARGS")
        .unwrap_or_default()
        .split(';')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').ok_or_else(|| {
            CniError::environment("CNI_ARGS", format!("{pair:?} is not KEY=VALUE"))
        })?;
        args.insert(key.to_string(), value.to_string());
    }
    let path = get("CNI_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();
    Ok(CallArgs {
        command,
        container_id,
        netns,
        ifname,
        args,
        path,
    })
}

/// The spec's container ID: a letter or digit, then letters, digits, `_`, `.` and `-`.
fn check_container_id(id: &str) -> Result<(), CniError> {
    let ok = id.len() <= 256
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CniError::environment(
            "CNI_CONTAINERID",
            format!("{id:?} is not a plain identifier (letters, digits, '_', '.', '-')"),
        ))
    }
}

/// A Linux interface name: 1-15 bytes, no '/', ':' or white space, not `.` or `..`.
fn check_ifname(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(CniError::environment(
            "CNI_IFNAME",
            format!(
                "{name:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
            ),
        ))
    }
}

/// An absolute path with no `..`; whether it really is a network namespace is checked by
/// [`crate::plugin`] against the file system before ADD changes anything.
fn check_netns_path(path: &str) -> Result<(), CniError> {
    let ok =
        path.starts_with('/') && !path.split('/').any(|part| part == "..") && !path.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(CniError::environment(
            "CNI_NETNS",
            format!("{path:?} is not an absolute path to a network namespace"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    const CONF: &str = r#"{"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "twill",
        "datastore": "sqlite:/tmp/x.db", "nodename": "node-1", "mtu": 1450, "log_level": "info",
        "log_file_path": "/var/log/twill/cni.log", "something_new": 1,
        "ipam": {"type": "twill-ipam", "ipv4_pools": ["10.90.0.0/24"], "ipv6_pools": [],
                 "assign_ipv4": "true", "assign_ipv6": "false"}}"#;

    #[test]
    fn the_documented_keys_are_read_and_unknown_ones_ignored() {
        let conf = parse_netconf(CONF.as_bytes(), &Fallbacks::default()).unwrap();
        assert_eq!(conf.datastore, "sqlite:/tmp/x.db");
        assert_eq!(conf.nodename, "node-1");
        assert_eq!(conf.mtu, 1450);
        assert_eq!(conf.ipam.ipv4_pools, ["10.90.0.0/24"]);
        assert!(conf.ipam.assign_ipv4 && !conf.ipam.assign_ipv6);
        // twill-node is asked on its default health address; ADD waits 10 s at most.
        assert_eq!(conf.node_health.as_deref(), Some("127.0.0.1:9099"));
        assert_eq!(
            conf.policy_setup_timeout,
            std::time::Duration::from_secs(10)
        );
        assert_eq!(conf.valid_attachments, None);
    }

    #[test]
    fn calicos_etcd_keys_name_an_etcd_datastore_with_its_tls_files() {
        let conf = |keys: &str| {
            let text = CONF.replace(r#""something_new": 1"#, keys);
            parse_netconf(text.as_bytes(), &Fallbacks::default())
        };
        assert_eq!(
            conf(r#""etcd_endpoints": "http://198.18.0.1:2379,http://198.18.0.2:2379""#)
                .unwrap()
                .datastore,
            "etcd://198.18.0.1:2379,198.18.0.2:2379"
        );
        // Calico's etcd manifest leaves the file keys empty without TLS.
        assert_eq!(
            conf(
                r#""etcd_endpoints": "http://198.18.0.1:2379", "etcd_ca_cert_file": "",
                   "etcd_cert_file": "", "etcd_key_file": """#
            )
            .unwrap()
            .datastore,
            "etcd://198.18.0.1:2379"
        );
        assert_eq!(
            conf(
                r#""etcd_endpoints": "https://198.18.0.1:2379", "etcd_ca_cert_file": "/e/ca.pem",
                   "etcd_cert_file": "/e/cert.pem", "etcd_key_file": "/e/key.pem""#
            )
            .unwrap()
            .datastore,
            "etcds://198.18.0.1:2379?ca=/e/ca.pem&cert=/e/cert.pem&key=/e/key.pem"
        );
        for (keys, key, reason) in [
            (
                r#""etcd_ca_cert_file": "/e/ca.pem""#,
                "etcd_ca_cert_file",
                "only with etcd_endpoints",
            ),
            (
                r#""etcd_endpoints": "198.18.0.1:2379""#,
                "etcd_endpoints",
                "is not http://HOST:PORT",
            ),
            (
                r#""etcd_endpoints": "https://198.18.0.1:2379""#,
                "datastore",
                "needs ca=PATH",
            ),
            (
                r#""etcd_endpoints": "https://h:1", "etcd_ca_cert_file": "/a", "etcd_cert_file": "/c""#,
                "datastore",
                "needs key=PATH",
            ),
        ] {
            let err = conf(keys).unwrap_err();
            assert_eq!(err.code, 7, "{keys}: {err}");
            assert!(err.msg.ends_with(key), "{keys}: {err}");
            assert!(err.details.contains(reason), "{keys}: {err}");
        }
    }

    #[test]
    fn node_health_policy_setup_timeout_and_both_names_of_gc_attachments() {
        let text = CONF.replace(
            r#""something_new": 1"#,
            r#""node_health_address": "none", "policy_setup_timeout_seconds": 0,
               "cni.dev/attachments": [{"containerID": "c1", "ifname": "eth0"}]"#,
        );
        let conf = parse_netconf(text.as_bytes(), &Fallbacks::default()).unwrap();
        assert_eq!(conf.node_health, None);
        assert!(conf.policy_setup_timeout.is_zero());
        assert_eq!(
            conf.valid_attachments,
            Some(vec![("c1".to_string(), "eth0".to_string())])
        );
        for (value, key) in [
            (
                r#""node_health_address": "localhost""#,
                "node_health_address",
            ),
            (
                r#""policy_setup_timeout_seconds": -1"#,
                "policy_setup_timeout_seconds",
            ),
        ] {
            let text = CONF.replace(r#""something_new": 1"#, value);
            let err = parse_netconf(text.as_bytes(), &Fallbacks::default()).unwrap_err();
            assert_eq!(err.code, 7, "{err}");
            assert!(err.msg.ends_with(key), "{key}: {err}");
        }
    }

    #[test]
    fn fallbacks_for_datastore_and_nodename() {
        let text = r#"{"cniVersion": "0.3.1", "name": "n", "ipam": {"type": "twill-ipam"}}"#;
        let fallbacks = Fallbacks {
            datastore: Some("etcd://127.0.0.1:2379".into()),
            hostname: Some("host-a".into()),
            mtu: Some(1400),
        };
        let conf = parse_netconf(text.as_bytes(), &fallbacks).unwrap();
        assert_eq!(conf.datastore, "etcd://127.0.0.1:2379");
        assert_eq!(conf.nodename, "host-a");
        assert_eq!(conf.mtu, 1400);
        let only_host = Fallbacks {
            hostname: Some("h".into()),
            ..Fallbacks::default()
        };
        let conf = parse_netconf(text.as_bytes(), &only_host).unwrap();
        assert_eq!(conf.datastore, DEFAULT_DATASTORE);
        assert_eq!(conf.mtu, 1500);
    }

    #[test]
    fn bad_values_name_the_key_with_code_7() {
        for (from, to, key) in [
            (r#""mtu": 1450"#, r#""mtu": "big""#, "mtu"),
            (
                r#""assign_ipv4": "true""#,
                r#""assign_ipv4": "yes""#,
                "ipam.assign_ipv4",
            ),
            (
                r#""datastore": "sqlite:/tmp/x.db""#,
                r#""datastore": "mysql://x""#,
                "datastore",
            ),
            (
                r#"["10.90.0.0/24"]"#,
                r#"["10.90.0.0/33"]"#,
                "ipam.ipv4_pools[0]",
            ),
        ] {
            let text = CONF.replace(from, to);
            let err = parse_netconf(text.as_bytes(), &Fallbacks::default()).unwrap_err();
            assert_eq!(err.code, 7, "{err}");
            assert!(err.msg.ends_with(key), "{key}: {err}");
        }
    }

    #[test]
    fn bad_environment_is_refused_with_code_4() {
        let base = [
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/run/netns/p"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert!(parse_call(Command::Add, &env(&base)).is_ok());
        for (variable, value) in [
            ("CNI_CONTAINERID", "../etc"),
            ("CNI_CONTAINERID", "a b"),
            ("CNI_IFNAME", "eth0/../x"),
            ("CNI_IFNAME", "averyveryverylongname"),
            ("CNI_NETNS", "relative/path"),
            ("CNI_NETNS", "/run/netns/../../etc/passwd"),
        ] {
            let vars: Vec<(&str, &str)> = base
                .iter()
                .map(|(k, v)| {
                    if *k == variable {
                        (*k, value)
                    } else {
                        (*k, *v)
                    }
                })
                .collect();
            let err = parse_call(Command::Add, &env(&vars)).unwrap_err();
            assert_eq!(err.code, 4, "{variable}={value}: {err}");
            assert!(err.msg.contains(variable));
        }
    }
}
