//! The `twill` and `twill-ipam` plugins: ADD, DEL, CHECK, GC and STATUS against the datastore
//! and the kernel. Every ADD either completes or undoes what it did.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use ipnet::IpNet;
use serde_json::Value;
use twill_ipam::runtime::{AssignArgs, Ipam, IpamError};
use twill_shared::client::{decode, Client, WriteMode};
use twill_shared::datastore::{connect, Datastore, DatastoreError};
use twill_shared::resource::kube::PodSpec;
use twill_shared::resource::{Key, Kind, Object, Resource};

use crate::config::{CallArgs, NetConf};
use crate::dataplane::{self, WorkloadLink, GATEWAY_V4, GATEWAY_V6};
use crate::endpoint::{self, Workload};
use crate::types::{code, CniError, CniResult, Interface, IpConfig, Route};

/// Calico's pod annotation: allocate exactly these addresses.
pub const IP_ADDRS_ANNOTATION: &str = "cni.projectcalico.org/ipAddrs";
/// Calico's pod annotation: allocate IPv4 from these pools.
pub const IPV4_POOLS_ANNOTATION: &str = "cni.projectcalico.org/ipv4pools";
/// Calico's pod annotation: allocate IPv6 from these pools.
pub const IPV6_POOLS_ANNOTATION: &str = "cni.projectcalico.org/ipv6pools";
/// Calico's pod annotation: prefixes the pod may send from besides its own addresses
/// (honoured by twill-node only with FelixConfiguration `workloadSourceSpoofing: Any`).
pub const ALLOWED_SOURCES_ANNOTATION: &str = "cni.projectcalico.org/allowedSourcePrefixes";

async fn open_store(conf: &NetConf) -> Result<Arc<dyn Datastore>, CniError> {
    connect(&conf.datastore).await.map_err(datastore_error)
}

fn datastore_error(err: DatastoreError) -> CniError {
    let code = match err {
        DatastoreError::BadUrl { .. } => code::INVALID_CONFIG,
        DatastoreError::Unavailable { .. } => code::TRY_AGAIN_LATER,
        _ => code::IO_FAILURE,
    };
    CniError::new(code, "datastore error", err.to_string())
}

fn ipam_error(err: IpamError) -> CniError {
    match err {
        IpamError::Datastore(err) => datastore_error(err),
        other => CniError::new(code::IPAM_FAILURE, "IPAM failed", other.to_string()),
    }
}

/// The handle of a container's addresses.
pub fn handle(conf: &NetConf, call: &CallArgs) -> String {
    format!("{}.{}", conf.name, call.container_id)
}

/// The Pod the runtime names in CNI_ARGS, from the datastore (outside Kubernetes, a `v1` Pod
/// resource describes the workload).
async fn pod_object(
    store: &Arc<dyn Datastore>,
    call: &CallArgs,
) -> Result<Option<Object<PodSpec>>, CniError> {
    let Some((namespace, name)) = call.pod() else {
        return Ok(None);
    };
    let key = Key::namespaced(Kind::Pod, namespace, name);
    let Some(stored) = store.get(&key).await.map_err(datastore_error)? else {
        return Ok(None);
    };
    match decode(stored) {
        Ok(Resource::Pod(pod)) => Ok(Some(pod)),
        Ok(_) => Ok(None),
        Err(err) => Err(CniError::new(
            code::IO_FAILURE,
            "cannot read the pod",
            err.to_string(),
        )),
    }
}

fn annotation_list(
    pod: Option<&Object<PodSpec>>,
    name: &str,
) -> Result<Option<Vec<String>>, CniError> {
    let Some(text) = pod
        .and_then(|p| p.metadata.annotations.as_ref())
        .and_then(|a| a.get(name))
    else {
        return Ok(None);
    };
    serde_json::from_str::<Vec<String>>(text)
        .map(Some)
        .map_err(|err| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("invalid pod annotation {name}"),
                format!("{text:?} is not a JSON list of strings: {err}"),
            )
        })
}

/// The prefixes the pod's annotation lets it send from (checked before anything changes).
fn allowed_sources(pod: Option<&Object<PodSpec>>) -> Result<Vec<IpNet>, CniError> {
    let Some(texts) = annotation_list(pod, ALLOWED_SOURCES_ANNOTATION)? else {
        return Ok(Vec::new());
    };
    texts
        .iter()
        .map(|text| {
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    CniError::new(
                        code::INVALID_CONFIG,
                        format!("invalid pod annotation {ALLOWED_SOURCES_ANNOTATION}"),
                        format!("{text:?} is not a CIDR"),
                    )
                })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// twill-ipam

/// `twill-ipam` ADD: the addresses of the container, from the pools the config and the pod's
/// annotations allow. A repeated ADD for the same container returns what it already holds.
pub async fn ipam_add(
    conf: &NetConf,
    call: &CallArgs,
    store: &Arc<dyn Datastore>,
) -> Result<CniResult, CniError> {
    let ipam = Ipam::new(
        store.clone(),
        &conf.nodename,
        Some(conf.ipam_lock_file.clone()),
    );
    let handle = handle(conf, call);
    let pod = pod_object(store, call).await?;
    let mut args = AssignArgs {
        handle: handle.clone(),
        ipv4: conf.ipam.assign_ipv4,
        ipv6: conf.ipam.assign_ipv6,
        ipv4_pools: conf.ipam.ipv4_pools.clone(),
        ipv6_pools: conf.ipam.ipv6_pools.clone(),
        ..AssignArgs::default()
    };
    args.attributes.insert("node".into(), conf.nodename.clone());
    args.attributes
        .insert("containerID".into(), call.container_id.clone());
    if let Some((namespace, name)) = call.pod() {
        args.attributes.insert("namespace".into(), namespace.into());
        args.attributes.insert("pod".into(), name.into());
    }
    if let Some(pools) = annotation_list(pod.as_ref(), IPV4_POOLS_ANNOTATION)? {
        args.ipv4_pools = pools;
    }
    if let Some(pools) = annotation_list(pod.as_ref(), IPV6_POOLS_ANNOTATION)? {
        args.ipv6_pools = pools;
    }
    if let Some(addresses) = annotation_list(pod.as_ref(), IP_ADDRS_ANNOTATION)? {
        args.addresses = addresses
            .iter()
            .map(|text| {
                text.parse::<IpAddr>().map_err(|_| {
                    CniError::new(
                        code::INVALID_CONFIG,
                        format!("invalid pod annotation {IP_ADDRS_ANNOTATION}"),
                        format!("{text:?} is not an IP address"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
    }
    let existing = ipam
        .addresses_of_handle(&handle)
        .await
        .map_err(ipam_error)?;
    let addresses: Vec<IpNet> = if existing.is_empty() {
        ipam.assign(&args).await.map_err(ipam_error)?.addresses
    } else {
        tracing::info!(%handle, ?existing, "ADD repeated: returning the addresses the container holds");
        existing.into_iter().map(IpNet::from).collect()
    };
    Ok(CniResult {
        cni_version: conf.cni_version.clone(),
        ips: addresses
            .into_iter()
            .map(|address| IpConfig {
                address,
                gateway: None,
                interface: None,
            })
            .collect(),
        ..CniResult::default()
    })
}

/// `twill-ipam` DEL: releases the container's handle (nothing held: success).
pub async fn ipam_del(
    conf: &NetConf,
    call: &CallArgs,
    store: &Arc<dyn Datastore>,
) -> Result<(), CniError> {
    let ipam = Ipam::new(
        store.clone(),
        &conf.nodename,
        Some(conf.ipam_lock_file.clone()),
    );
    let released = ipam
        .release_handle(&handle(conf, call))
        .await
        .map_err(ipam_error)?;
    tracing::info!(handle = %handle(conf, call), ?released, "released");
    Ok(())
}

/// `twill-ipam` GC: releases this node's handles of this network (`<network>.<container>`)
/// whose container is not among the valid attachments. Without the list of valid
/// attachments it releases nothing.
pub async fn ipam_gc(conf: &NetConf, store: &Arc<dyn Datastore>) -> Result<Vec<String>, CniError> {
    let Some(attachments) = &conf.valid_attachments else {
        tracing::info!(
            "GC without cni.dev/valid-attachments: nothing can be judged stale, nothing released"
        );
        return Ok(Vec::new());
    };
    let valid: BTreeSet<&str> = attachments.iter().map(|(c, _)| c.as_str()).collect();
    let inventory = twill_ipam::gc::inventory(store.as_ref())
        .await
        .map_err(ipam_error)?;
    let prefix = format!("{}.", conf.name);
    let mut stale = BTreeSet::new();
    for block in &inventory.blocks {
        for (_, attribute) in twill_ipam::block::allocated(block) {
            let Some(handle) = attribute.handle_id.as_deref() else {
                continue;
            };
            let on_node =
                attribute.secondary.as_ref().and_then(|s| s.get("node")) == Some(&conf.nodename);
            if let Some(container) = handle.strip_prefix(&prefix) {
                if on_node && !valid.contains(container) {
                    stale.insert(handle.to_string());
                }
            }
        }
    }
    let ipam = Ipam::new(
        store.clone(),
        &conf.nodename,
        Some(conf.ipam_lock_file.clone()),
    );
    for handle in &stale {
        ipam.release_handle(handle).await.map_err(ipam_error)?;
        tracing::info!(%handle, "GC released a handle no valid attachment uses");
    }
    Ok(stale.into_iter().collect())
}

/// STATUS: twill-node is ready on this node, the datastore answers and a pool can serve it.
pub async fn status(conf: &NetConf) -> Result<(), CniError> {
    node_ready(conf, code::NOT_AVAILABLE).await?;
    let unavailable =
        |details: String| CniError::new(code::NOT_AVAILABLE, "twill cannot serve ADD", details);
    let store = connect(&conf.datastore)
        .await
        .map_err(|err| unavailable(err.to_string()))?;
    let pools = store
        .list(Some(Kind::IpPool), None)
        .await
        .map_err(|err| unavailable(err.to_string()))?;
    let enabled = pools
        .items
        .iter()
        .any(|p| p.value["spec"]["disabled"] != Value::Bool(true));
    if !enabled {
        return Err(unavailable(format!(
            "no enabled IPPool in {}",
            conf.datastore
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// IPAM as the main plugin sees it: in process for twill-ipam, else the delegated binary.

async fn delegate_add(
    conf: &NetConf,
    call: &CallArgs,
    store: &Arc<dyn Datastore>,
) -> Result<CniResult, CniError> {
    if conf.ipam.plugin == "twill-ipam" {
        return ipam_add(conf, call, store).await;
    }
    let output = exec_delegate(conf, call, "ADD").await?;
    CniResult::from_json(&output)
}

async fn delegate_del(
    conf: &NetConf,
    call: &CallArgs,
    store: &Arc<dyn Datastore>,
) -> Result<(), CniError> {
    if conf.ipam.plugin == "twill-ipam" {
        return ipam_del(conf, call, store).await;
    }
    exec_delegate(conf, call, "DEL").await.map(|_| ())
}

/// Runs the IPAM plugin named by `ipam.type` from CNI_PATH, as the spec's delegation does.
async fn exec_delegate(conf: &NetConf, call: &CallArgs, command: &str) -> Result<Value, CniError> {
    let plugin = &conf.ipam.plugin;
    let binary = call
        .path
        .iter()
        .map(|dir| dir.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| CniError::config("ipam.type", format!("{plugin:?} is not in CNI_PATH")))?;
    #[allow(clippy::disallowed_methods)] // The plugin is an edge: delegation runs a plugin.
    let mut child = tokio::process::Command::new(&binary)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|err| {
            CniError::new(
                code::IO_FAILURE,
                format!("cannot run {}", binary.display()),
                err.to_string(),
            )
        })?;
    let input = serde_json::to_vec(&conf.raw).expect("JSON values serialize");
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(&input).await.map_err(|err| {
            CniError::new(
                code::IO_FAILURE,
                "cannot write to the IPAM plugin",
                err.to_string(),
            )
        })?;
    }
    let output = child.wait_with_output().await.map_err(|err| {
        CniError::new(code::IO_FAILURE, "the IPAM plugin failed", err.to_string())
    })?;
    let value: Value = if output.stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&output.stdout).map_err(|err| {
            CniError::new(
                code::DECODE_FAILURE,
                format!("{plugin} printed no JSON"),
                err.to_string(),
            )
        })?
    };
    if !output.status.success() {
        return Err(CniError::new(
            value["code"]
                .as_u64()
                .unwrap_or(u64::from(code::IPAM_FAILURE)) as u32,
            format!("{plugin}: {}", value["msg"].as_str().unwrap_or("failed")),
            value["details"].as_str().unwrap_or_default().to_string(),
        ));
    }
    Ok(value)
}

// ---------------------------------------------------------------------------------------
// twill

/// Whether `path` is a network namespace (a file of the namespace file system, nsfs).
fn check_netns(path: &Path) -> Result<(), CniError> {
    let own = std::fs::metadata("/proc/thread-self/ns/net").map_err(|err| {
        CniError::new(
            code::IO_FAILURE,
            "cannot read this thread's network namespace",
            err.to_string(),
        )
    })?;
    match std::fs::metadata(path) {
        Ok(meta) if meta.dev() == own.dev() => Ok(()),
        Ok(_) => Err(CniError::environment(
            "CNI_NETNS",
            format!("{} is not a network namespace", path.display()),
        )),
        Err(err) => Err(CniError::environment(
            "CNI_NETNS",
            format!("{}: {err}", path.display()),
        )),
    }
}

fn workload_link(conf: &NetConf, call: &CallArgs, addresses: Vec<IpNet>) -> WorkloadLink {
    let id = match call.pod() {
        Some((namespace, pod)) => format!("{namespace}.{pod}"),
        None => call.container_id.clone(),
    };
    WorkloadLink {
        netns: call.netns.clone(),
        ifname: call.ifname.clone(),
        host_ifname: dataplane::host_ifname(&conf.interface_prefix, &id),
        mtu: conf.mtu,
        addresses,
    }
}

/// Host prefixes (/32, /128) of the addresses IPAM gave.
fn host_prefixes(result: &CniResult) -> Vec<IpNet> {
    result
        .ips
        .iter()
        .map(|ip| IpNet::from(ip.address.addr()))
        .collect()
}

/// Refuses to go on while twill-node is not ready on this node (not running, not yet in sync,
/// nothing applied since it started): a pod wired then would run with no policy.
async fn node_ready(conf: &NetConf, code: u32) -> Result<(), CniError> {
    let Some(address) = &conf.node_health else {
        return Ok(());
    };
    let path = if code == code::NOT_AVAILABLE {
        "/applied"
    } else {
        "/readyz"
    };
    crate::node::ready(address, path).await.map_err(|reason| {
        CniError::new(
            code,
            "twill-node is not ready on this node",
            format!(
                "{reason}; pods start once twill-node runs and has programmed this node \
                 (or set node_health_address to \"none\" where no twill-node runs)"
            ),
        )
    })
}

/// Waits (at most `policy_setup_timeout_seconds`) until twill-node's dataplane holds the new
/// endpoint. A pod whose endpoint is not programmed in time still starts: until it is, its
/// interface is unknown to the dataplane, which drops its traffic (as Calico, ADD is not
/// failed for it).
async fn wait_for_policy(conf: &NetConf, store: &Arc<dyn Datastore>, key: &Key) {
    let Some(address) = &conf.node_health else {
        return;
    };
    if conf.policy_setup_timeout.is_zero() {
        return;
    }
    let revision = match store.get(key).await {
        Ok(Some(stored)) => stored.revision,
        _ => 0,
    };
    let namespace = key.namespace.as_deref().unwrap_or("default");
    match crate::node::wait_programmed(
        address,
        namespace,
        &key.name,
        revision,
        conf.policy_setup_timeout,
    )
    .await
    {
        Ok(()) => tracing::debug!(endpoint = %key, revision, "policy programmed"),
        Err(last) => tracing::warn!(
            endpoint = %key,
            revision,
            timeout_s = conf.policy_setup_timeout.as_secs(),
            "the endpoint's policy is not programmed yet ({last}); the pod starts with its traffic dropped until it is"
        ),
    }
}

/// `twill` ADD.
pub async fn add(conf: &NetConf, call: &CallArgs) -> Result<CniResult, CniError> {
    check_netns(&call.netns)?;
    node_ready(conf, code::TRY_AGAIN_LATER).await?;
    let store = open_store(conf).await?;
    let pod = pod_object(&store, call).await?;
    if store.endpoints_from_pods() && pod.is_none() {
        // On Kubernetes the Pod is the endpoint: without it there is nothing to wire for.
        let (namespace, name) = call.pod().unwrap_or(("?", "?"));
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "the pod does not exist",
            format!(
                "pod {namespace}/{name} is not on the API server {} (K8S_POD_NAMESPACE and \
                 K8S_POD_NAME in CNI_ARGS name it)",
                conf.datastore
            ),
        ));
    }
    let allowed_sources = allowed_sources(pod.as_ref())?;
    let ipam_result = delegate_add(conf, call, &store).await?;
    let addresses = host_prefixes(&ipam_result);
    if addresses.is_empty() {
        return Err(CniError::new(
            code::IPAM_FAILURE,
            "IPAM returned no address",
            conf.ipam.plugin.clone(),
        ));
    }
    let link = workload_link(conf, call, addresses.clone());
    let wired = match dataplane::add(&link).await {
        Ok(wired) => wired,
        Err(err) => {
            undo_ipam(conf, call, &store).await;
            return Err(CniError::new(
                code::DATAPLANE_FAILURE,
                "cannot wire the pod",
                err.to_string(),
            ));
        }
    };
    let workload = Workload {
        node: &conf.nodename,
        pod: call.pod(),
        pod_object: pod.as_ref(),
        container_id: &call.container_id,
        ifname: &call.ifname,
        network: &conf.name,
    };
    let endpoint = endpoint::workload_endpoint(
        &workload,
        &addresses,
        &link.host_ifname,
        &wired.pod_mac,
        &allowed_sources,
    );
    let written = if store.endpoints_from_pods() {
        annotate_pod(&store, call, &addresses).await
    } else {
        Client::new(store.clone())
            .write_all(&[endpoint], WriteMode::Apply)
            .await
            .map(drop)
            .map_err(|err| err.to_string())
    };
    if let Err(err) = written {
        if let Err(undo) = dataplane::del(&call.netns, &call.ifname, &link.host_ifname).await {
            tracing::error!(error = %undo, "cannot remove the pod's interface after a failed ADD");
        }
        undo_ipam(conf, call, &store).await;
        return Err(CniError::new(
            code::IO_FAILURE,
            "cannot write the workload endpoint",
            err.to_string(),
        ));
    }
    wait_for_policy(conf, &store, &endpoint_key(conf, call)).await;
    tracing::info!(container = %call.container_id, ?addresses, host_ifname = %link.host_ifname, "ADD done");
    Ok(add_result(conf, call, &link, &wired.pod_mac, &ipam_result))
}

/// Calico's pod annotations: the addresses and the container they belong to (on Kubernetes
/// they make the pod's workload endpoint). Conditional on the pod's revision, re-read on a
/// conflict (the kubelet writes the pod's status meanwhile), and only while it is the same
/// pod (uid).
async fn annotate_pod(
    store: &Arc<dyn Datastore>,
    call: &CallArgs,
    addresses: &[IpNet],
) -> Result<(), String> {
    use twill_shared::kubernetes::objects::{
        CONTAINER_ID_ANNOTATION, POD_IPS_ANNOTATION, POD_IP_ANNOTATION,
    };
    let (namespace, name) = call.pod().ok_or("CNI_ARGS names no pod")?;
    let key = Key::namespaced(Kind::Pod, namespace, name);
    let ips: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    let annotations = std::collections::BTreeMap::from([
        (POD_IP_ANNOTATION.to_string(), ips.first().cloned()),
        (POD_IPS_ANNOTATION.to_string(), Some(ips.join(","))),
        (
            CONTAINER_ID_ANNOTATION.to_string(),
            Some(call.container_id.clone()),
        ),
    ]);
    let mut uid = None;
    for _ in 0..10 {
        let stored = store
            .get(&key)
            .await
            .map_err(|err| err.to_string())?
            .ok_or_else(|| format!("pod {namespace}/{name} is gone"))?;
        let current = stored.value["metadata"]["uid"].as_str().map(str::to_string);
        if uid.is_some() && uid != current {
            return Err(format!("pod {namespace}/{name} was replaced during ADD"));
        }
        uid = current;
        match store
            .annotate(&key, &annotations, Some(stored.revision))
            .await
        {
            Ok(_) => return Ok(()),
            Err(DatastoreError::Conflict { .. }) => continue,
            Err(err) => return Err(err.to_string()),
        }
    }
    Err(format!(
        "pod {namespace}/{name} kept changing while its addresses were written"
    ))
}

/// Removes Calico's pod annotations, only while they name this container.
async fn clear_pod_annotations(
    store: &Arc<dyn Datastore>,
    call: &CallArgs,
) -> Result<(), CniError> {
    use twill_shared::kubernetes::objects::{
        CONTAINER_ID_ANNOTATION, POD_IPS_ANNOTATION, POD_IP_ANNOTATION,
    };
    let Some((namespace, name)) = call.pod() else {
        return Ok(());
    };
    let key = Key::namespaced(Kind::Pod, namespace, name);
    let annotations = std::collections::BTreeMap::from([
        (POD_IP_ANNOTATION.to_string(), None),
        (POD_IPS_ANNOTATION.to_string(), None),
        (CONTAINER_ID_ANNOTATION.to_string(), None),
    ]);
    for _ in 0..10 {
        let Some(stored) = store.get(&key).await.map_err(datastore_error)? else {
            return Ok(());
        };
        let annotated = &stored.value["metadata"]["annotations"][CONTAINER_ID_ANNOTATION];
        if annotated.as_str() != Some(call.container_id.as_str()) {
            return Ok(()); // another sandbox's, or none
        }
        match store
            .annotate(&key, &annotations, Some(stored.revision))
            .await
        {
            Ok(_) | Err(DatastoreError::NotFound { .. }) => return Ok(()),
            Err(DatastoreError::Conflict { .. }) => continue,
            Err(err) => return Err(datastore_error(err)),
        }
    }
    Err(CniError::new(
        code::TRY_AGAIN_LATER,
        "cannot clear the pod's address annotations",
        format!("pod {namespace}/{name} kept changing"),
    ))
}

async fn undo_ipam(conf: &NetConf, call: &CallArgs, store: &Arc<dyn Datastore>) {
    if let Err(err) = delegate_del(conf, call, store).await {
        tracing::error!(error = %err, "cannot release the addresses of a failed ADD");
    }
}

fn add_result(
    conf: &NetConf,
    call: &CallArgs,
    link: &WorkloadLink,
    pod_mac: &str,
    ipam: &CniResult,
) -> CniResult {
    let mut routes = Vec::new();
    let has = |v4: bool| link.addresses.iter().any(|a| a.addr().is_ipv4() == v4);
    if has(true) {
        routes.push(Route {
            dst: "0.0.0.0/0".parse().expect("constant"),
            gw: Some(IpAddr::V4(GATEWAY_V4)),
        });
    }
    if has(false) {
        routes.push(Route {
            dst: "::/0".parse().expect("constant"),
            gw: Some(IpAddr::V6(GATEWAY_V6)),
        });
    }
    CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![
            Interface {
                name: link.host_ifname.clone(),
                mac: Some("ee:ee:ee:ee:ee:ee".into()),
                mtu: None,
                sandbox: None,
            },
            Interface {
                name: call.ifname.clone(),
                mac: Some(pod_mac.to_string()),
                mtu: None,
                sandbox: Some(call.netns.display().to_string()),
            },
        ],
        ips: link
            .addresses
            .iter()
            .map(|address| IpConfig {
                address: *address,
                gateway: None,
                interface: Some(1),
            })
            .collect(),
        routes,
        dns: ipam.dns.clone(),
    }
}

fn endpoint_key(conf: &NetConf, call: &CallArgs) -> Key {
    let workload = Workload {
        node: &conf.nodename,
        pod: call.pod(),
        pod_object: None,
        container_id: &call.container_id,
        ifname: &call.ifname,
        network: &conf.name,
    };
    Key::namespaced(
        Kind::WorkloadEndpoint,
        workload.namespace(),
        &workload.endpoint_name(),
    )
}

/// `twill` DEL: idempotent; a missing namespace, interface, allocation or endpoint is fine.
pub async fn del(conf: &NetConf, call: &CallArgs) -> Result<(), CniError> {
    let link = workload_link(conf, call, Vec::new());
    let key = endpoint_key(conf, call);
    let interface_error = |err: dataplane::DataplaneError| {
        CniError::new(
            code::DATAPLANE_FAILURE,
            "cannot remove the pod's interface",
            err.to_string(),
        )
    };
    // The pod's end goes first, while the datastore opens: deleting it removes the pair, and
    // only this sandbox's pair (its namespace is this container's).
    let pod_side = async {
        if call.netns.as_os_str().is_empty() {
            return Ok(());
        }
        dataplane::del(&call.netns, &call.ifname, "").await
    };
    let lookup = async {
        let store = open_store(conf).await?;
        let endpoint = store.get(&key).await.map_err(datastore_error)?;
        Ok::<_, CniError>((store, endpoint))
    };
    let (pod_side, lookup) = tokio::join!(pod_side, lookup);
    pod_side.map_err(interface_error)?;
    let (store, endpoint) = lookup?;
    // Only this container's endpoint and host end: a newer sandbox of the same pod may have
    // replaced them (the host end is named after the pod, not the container).
    let ours = endpoint.as_ref().is_none_or(|stored| {
        stored.value["spec"]["containerID"] == Value::String(call.container_id.clone())
    });
    if ours {
        // A host end left without its pod end (the namespace was already gone).
        dataplane::del(Path::new(""), &call.ifname, &link.host_ifname)
            .await
            .map_err(interface_error)?;
    }
    // The order matters to a pod that gets one of these addresses next: this node's flows go
    // first; then the endpoint, whose deletion every other node sees (and forgets its flows)
    // before any later owner of the address can appear; then the addresses are released.
    let endpoint = endpoint.filter(|_| ours);
    forget_flows(conf, call, &store, endpoint.as_ref()).await?;
    if store.endpoints_from_pods() {
        clear_pod_annotations(&store, call).await?;
    } else if let Some(stored) = &endpoint {
        match store.delete(&key, Some(stored.revision)).await {
            Ok(_) | Err(DatastoreError::NotFound { .. } | DatastoreError::Conflict { .. }) => {}
            Err(err) => return Err(datastore_error(err)),
        }
    }
    delegate_del(conf, call, &store).await?;
    tracing::info!(container = %call.container_id, "DEL done");
    Ok(())
}

/// Deletes this node's conntrack entries to and from the container's addresses before they
/// are released: a pod that gets one of them next must not inherit the old pod's flows,
/// which established-traffic rules would let past its own policy. The addresses come from the
/// endpoint and, with twill-ipam, from the container's IPAM handle.
async fn forget_flows(
    conf: &NetConf,
    call: &CallArgs,
    store: &Arc<dyn Datastore>,
    endpoint: Option<&twill_shared::datastore::Stored>,
) -> Result<(), CniError> {
    let mut addresses: BTreeSet<IpAddr> = endpoint
        .and_then(|e| e.value["spec"]["ipNetworks"].as_array().cloned())
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str()?.parse::<IpNet>().ok())
        .map(|n| n.addr())
        .collect();
    if conf.ipam.plugin == "twill-ipam" {
        let ipam = Ipam::new(store.clone(), &conf.nodename, None);
        addresses.extend(
            ipam.addresses_of_handle(&handle(conf, call))
                .await
                .map_err(ipam_error)?,
        );
    }
    if addresses.is_empty() {
        return Ok(());
    }
    match twill_felix::apply::conntrack::delete_flows_of(&addresses) {
        Ok(deleted) => {
            tracing::info!(
                ?addresses,
                deleted,
                "conntrack entries of the released addresses deleted"
            );
            Ok(())
        }
        // No netfilter netlink in this kernel: no connection tracking, no entries left.
        Err(err) if err.raw_os_error() == Some(nix::errno::Errno::EPROTONOSUPPORT as i32) => Ok(()),
        Err(err) => Err(CniError::new(
            code::DATAPLANE_FAILURE,
            "cannot delete the conntrack entries of the pod's addresses",
            format!(
                "{addresses:?}: {err} (EINVAL: load the nf_conntrack_netlink module); the \
                 addresses stay allocated until DEL succeeds"
            ),
        )),
    }
}

/// `twill` CHECK: the interface, its addresses and routes, the host route and the endpoint
/// are as ADD left them; every problem is named.
pub async fn check(conf: &NetConf, call: &CallArgs) -> Result<(), CniError> {
    check_netns(&call.netns)?;
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::config("prevResult", "CHECK needs the result of ADD"))?;
    let prev = CniResult::from_json(prev)?;
    let addresses = host_prefixes(&prev);
    let link = workload_link(conf, call, addresses.clone());
    let mut problems = Vec::new();
    if let Err(err) = dataplane::check(&link).await {
        problems.push(err.to_string());
    }
    let store = open_store(conf).await?;
    let key = endpoint_key(conf, call);
    match store.get(&key).await.map_err(datastore_error)? {
        None => problems.push(format!("workload endpoint {key} is missing")),
        Some(stored) => {
            let spec = &stored.value["spec"];
            let stored_addresses: BTreeSet<String> = spec["ipNetworks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            let expected: BTreeSet<String> = addresses.iter().map(|a| a.to_string()).collect();
            if stored_addresses != expected {
                problems.push(format!("workload endpoint {key} has addresses {stored_addresses:?}, expected {expected:?}"));
            }
            if spec["interfaceName"].as_str() != Some(link.host_ifname.as_str()) {
                problems.push(format!(
                    "workload endpoint {key} names interface {}, expected {}",
                    spec["interfaceName"], link.host_ifname
                ));
            }
        }
    }
    let ipam = Ipam::new(store.clone(), &conf.nodename, None);
    let held: BTreeSet<IpAddr> = ipam
        .addresses_of_handle(&handle(conf, call))
        .await
        .map_err(ipam_error)?
        .into_iter()
        .collect();
    if conf.ipam.plugin == "twill-ipam" {
        for address in &addresses {
            if !held.contains(&address.addr()) {
                problems.push(format!(
                    "{} is not allocated to {}",
                    address.addr(),
                    handle(conf, call)
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::CHECK_FAILED,
            "CHECK failed",
            problems.join("; "),
        ))
    }
}

/// `twill` GC (1.1.0): removes endpoints and addresses of this node's containers on this
/// network that are not among the valid attachments. Without the list of valid attachments
/// (a runtime that sent none) it removes nothing; endpoints of other networks, and endpoints
/// that name no network, are never touched.
pub async fn gc(conf: &NetConf) -> Result<(), CniError> {
    let Some(attachments) = &conf.valid_attachments else {
        tracing::info!(network = %conf.name, "GC without cni.dev/valid-attachments: nothing can be judged stale, nothing removed");
        return Ok(());
    };
    let store = open_store(conf).await?;
    let valid: BTreeSet<(String, String)> = attachments.iter().cloned().collect();
    let listing = store
        .list(Some(Kind::WorkloadEndpoint), None)
        .await
        .map_err(datastore_error)?;
    for stored in listing.items {
        let spec = &stored.value["spec"];
        let network = &stored.value["metadata"]["annotations"][endpoint::NETWORK_ANNOTATION];
        let mine = spec["node"].as_str() == Some(conf.nodename.as_str())
            && network.as_str() == Some(conf.name.as_str());
        let attachment = (
            spec["containerID"].as_str().unwrap_or_default().to_string(),
            spec["endpoint"].as_str().unwrap_or_default().to_string(),
        );
        if mine && !valid.contains(&attachment) {
            match store.delete(&stored.key, Some(stored.revision)).await {
                Ok(_)
                | Err(DatastoreError::NotFound { .. })
                | Err(DatastoreError::Conflict { .. }) => {}
                Err(err) => return Err(datastore_error(err)),
            }
            tracing::info!(endpoint = %stored.key, "GC removed an endpoint no valid attachment uses");
        }
    }
    if conf.ipam.plugin == "twill-ipam" {
        ipam_gc(conf, &store).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The process: environment and stdin in, JSON out.

/// Which plugin a binary is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugin {
    /// The main plugin.
    Twill,
    /// The IPAM plugin.
    TwillIpam,
}

/// Reads the environment and stdin, runs the command, prints the result; returns the exit
/// code.
pub fn run(plugin: Plugin) -> i32 {
    let environment = |name: &str| std::env::var(name).ok();
    let mut input = Vec::new();
    let command = match crate::config::parse_command(&environment) {
        Ok(command) => command,
        Err(err) => return fail("1.0.0", &err),
    };
    if command != crate::config::Command::Version || !atty_stdin() {
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut input);
    }
    if command == crate::config::Command::Version {
        let version = serde_json::from_slice::<Value>(&input)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
            .unwrap_or_else(|| "1.1.0".into());
        print_json(&crate::types::version_json(&version));
        return 0;
    }
    let fallbacks = crate::config::Fallbacks {
        datastore: environment("TWILL_DATASTORE"),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string()),
        mtu: std::fs::read_to_string(crate::config::MTU_FILE)
            .ok()
            .and_then(|t| t.trim().parse().ok()),
    };
    let conf = match crate::config::parse_netconf(&input, &fallbacks) {
        Ok(conf) => conf,
        Err(err) => {
            let version = serde_json::from_slice::<Value>(&input)
                .ok()
                .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
                .unwrap_or_else(|| "1.0.0".into());
            return fail(&version, &err);
        }
    };
    let call = match crate::config::parse_call(command, &environment) {
        Ok(call) => call,
        Err(err) => return fail(&conf.cni_version, &err),
    };
    if let Err(err) = crate::types::check_command_version(command, &conf.cni_version) {
        return fail(&conf.cni_version, &err);
    }
    let _guard = crate::logging::init(&conf);
    #[allow(clippy::disallowed_methods)] // The plugin's entry point is an edge.
    let started = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime builds");
    let outcome = runtime.block_on(dispatch(plugin, &conf, &call));
    tracing::debug!(command = ?command, elapsed_ms = started.elapsed().as_secs_f64() * 1000.0, "done");
    match outcome {
        Ok(Some(result)) => {
            print_json(&result.to_json(&conf.cni_version));
            0
        }
        Ok(None) => 0,
        Err(err) => {
            tracing::error!(command = ?command, container = %call.container_id, error = %err, "failed");
            fail(&conf.cni_version, &err)
        }
    }
}

async fn dispatch(
    plugin: Plugin,
    conf: &NetConf,
    call: &CallArgs,
) -> Result<Option<CniResult>, CniError> {
    use crate::config::Command;
    match (plugin, call.command) {
        (Plugin::Twill, Command::Add) => add(conf, call).await.map(Some),
        (Plugin::Twill, Command::Del) => del(conf, call).await.map(|()| None),
        (Plugin::Twill, Command::Check) => check(conf, call).await.map(|()| None),
        (Plugin::Twill, Command::Gc) => gc(conf).await.map(|()| None),
        (_, Command::Status) => status(conf).await.map(|()| None),
        (Plugin::TwillIpam, Command::Add) => {
            let store = open_store(conf).await?;
            ipam_add(conf, call, &store).await.map(Some)
        }
        (Plugin::TwillIpam, Command::Del) => {
            let store = open_store(conf).await?;
            ipam_del(conf, call, &store).await.map(|()| None)
        }
        (Plugin::TwillIpam, Command::Check) => {
            let store = open_store(conf).await?;
            let ipam = Ipam::new(store, &conf.nodename, None);
            let held = ipam
                .addresses_of_handle(&handle(conf, call))
                .await
                .map_err(ipam_error)?;
            if held.is_empty() {
                return Err(CniError::new(
                    code::CHECK_FAILED,
                    "CHECK failed",
                    format!("{} holds no address", handle(conf, call)),
                ));
            }
            Ok(None)
        }
        (Plugin::TwillIpam, Command::Gc) => {
            let store = open_store(conf).await?;
            ipam_gc(conf, &store).await.map(|_| None)
        }
        (_, Command::Version) => Ok(None),
    }
}

fn atty_stdin() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal()
}

fn print_json(value: &Value) {
    let mut stdout = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut stdout, value);
    let _ = writeln!(stdout);
}

fn fail(version: &str, err: &CniError) -> i32 {
    print_json(&err.to_json(version));
    1
}
