//! The Kubernetes API datastore (Calico's "KDD"), through kube.
//!
//! Calico's kinds are `projectcalico.org/v3` custom resources; Kubernetes' own kinds are
//! themselves; WorkloadEndpoints, Profiles and Nodes are derived from Pods, Namespaces and
//! ServiceAccounts, and Nodes ([`crate::kubernetes`]). Revisions are resourceVersions: etcd's
//! revision of each object's last write, one counter for the whole server.
//!
//! What the API cannot do and how this backend stands in for it:
//! - No multi-object transaction: a transaction of more than one operation is refused; a
//!   single operation is a compare-and-swap on resourceVersion (409 → Conflict).
//! - No single stream across kinds: a list is one paginated list per source resource (each
//!   with its own resourceVersion), a watch one watch per source from that source's own
//!   list revision, merged; `410 Gone` (history compacted) → RevisionTooOld, the caller lists
//!   again. A watch that loses its connection reconnects by itself from the last revision it
//!   delivered or was told of by a bookmark, and says so with
//!   [`DatastoreError::Interrupted`] (nothing is lost in between).
//! - Compaction is the API server's (and etcd's) business.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{
    Api, ApiResource as KubeResource, DeleteParams, DynamicObject, ListParams, PostParams,
    Preconditions, WatchEvent, WatchParams,
};
use serde_json::Value;

use super::{DatastoreError, Event, EventType, Listing, Revision, Stored, TxnOp, Watch};
use crate::kubernetes::objects::{self, from_api, revision_of, to_api};
use crate::kubernetes::{served, ApiResource, Served};
use crate::resource::{Key, Kind};

/// How long connecting (and each call) may take before the API server counts as unreachable.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// kube's client stack (the server's base URI, retries of 429/503/504 as kube does them,
/// authentication, extra headers, rustls with kube's TLS settings, connect/read/write
/// timeouts), with changes client-go has too:
/// - TCP_NODELAY: with Nagle's algorithm on, a small write that follows an unacknowledged one
///   waits for the peer's delayed acknowledgement (~40 ms);
/// - HTTP/2 offered (ALPN) beside HTTP/1.1: requests made at once share one connection
///   instead of opening one each (a short-lived process such as the CNI plugin otherwise pays
///   a TLS handshake with its client certificate per parallel request, inside IPAM's host
///   lock).
fn client_of(config: kube::Config) -> Result<kube::Client, kube::Error> {
    use kube::client::ConfigExt;
    if let Some(proxy) = &config.proxy_url {
        // kube's proxy support is not built in; going direct would ignore what was asked.
        return Err(kube::Error::Service(
            format!("the kubeconfig names a proxy ({proxy}), which Twill does not support").into(),
        ));
    }
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(30)));
    let tls = config.rustls_client_config()?;
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let builder = match config.tls_server_name.as_ref() {
        Some(name) => {
            let name = rustls_server_name(name)?;
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    let https = builder.enable_http1().enable_http2().wrap_connector(http);
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    // One HTTP/2 connection carries every call and watch: a connection that dies silently
    // (a failover, a lost conntrack entry) is found by pings, as client-go finds it, instead
    // of stalling every watch until the kernel gives up.
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .http2_keep_alive_interval(Duration::from_secs(30))
        .http2_keep_alive_timeout(Duration::from_secs(15))
        .http2_keep_alive_while_idle(true)
        .build(connector);
    let retry = config
        .default_retry
        .then(|| tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry()));
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(retry)
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
        .service(hyper);
    Ok(kube::Client::new(service, config.default_namespace))
}

/// A kubeconfig's `tls-server-name` as rustls takes it.
fn rustls_server_name(name: &str) -> Result<rustls_pki_types::ServerName<'static>, kube::Error> {
    rustls_pki_types::ServerName::try_from(name.to_string())
        .map_err(|err| kube::Error::Service(format!("tls-server-name {name:?}: {err}").into()))
}

/// Objects per page of a list.
const PAGE: u32 = 500;

/// The Kubernetes datastore.
#[derive(Clone)]
pub struct KubeStore {
    url: String,
    client: kube::Client,
    /// Per source, the revision of the last full list (what a watch from that list's
    /// revision starts each source from).
    last_list: Arc<Mutex<Option<LastList>>>,
}

/// A full list's revision and each source's own.
type LastList = (Revision, BTreeMap<ApiKey, Revision>);

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// A source resource, as a map key.
type ApiKey = (&'static str, &'static str);

fn api_key(resource: &ApiResource) -> ApiKey {
    (resource.group, resource.plural)
}

const PODS: ApiResource = ApiResource {
    group: "",
    version: "v1",
    kind: "Pod",
    plural: "pods",
    namespaced: true,
};
const NAMESPACES: ApiResource = ApiResource {
    group: "",
    version: "v1",
    kind: "Namespace",
    plural: "namespaces",
    namespaced: false,
};
const SERVICE_ACCOUNTS: ApiResource = ApiResource {
    group: "",
    version: "v1",
    kind: "ServiceAccount",
    plural: "serviceaccounts",
    namespaced: true,
};
const NODES: ApiResource = ApiResource {
    group: "",
    version: "v1",
    kind: "Node",
    plural: "nodes",
    namespaced: false,
};

/// The API resources a kind is read from.
fn sources_of(kind: Kind) -> Vec<ApiResource> {
    match (kind, served(kind)) {
        (_, Served::Crd(resource) | Served::Native(resource)) => vec![resource],
        (Kind::WorkloadEndpoint, _) => vec![PODS],
        (Kind::Profile, _) => vec![NAMESPACES, SERVICE_ACCOUNTS],
        (Kind::Node, _) => vec![NODES],
        (other, Served::Derived { .. }) => unreachable!("{other:?} has no source"),
    }
}

/// The kinds one source object stands for.
fn kinds_of(source: &ApiResource) -> Vec<Kind> {
    match (source.group, source.plural) {
        ("", "pods") => vec![Kind::Pod, Kind::WorkloadEndpoint],
        ("", "namespaces") => vec![Kind::Namespace, Kind::Profile],
        ("", "serviceaccounts") => vec![Kind::ServiceAccount, Kind::Profile],
        ("", "nodes") => vec![Kind::Node],
        _ => Kind::ALL
            .iter()
            .copied()
            .filter(|k| sources_of(*k).contains(source))
            .collect(),
    }
}

/// Every source resource.
fn all_sources() -> Vec<ApiResource> {
    let mut sources: Vec<ApiResource> = Vec::new();
    for kind in Kind::ALL {
        for source in sources_of(*kind) {
            if !sources.contains(&source) {
                sources.push(source);
            }
        }
    }
    sources
}

/// The object of `kind` a source object stands for (None: it stands for none now).
fn derive(kind: Kind, object: &Value) -> Option<Value> {
    match kind {
        Kind::WorkloadEndpoint => objects::workload_endpoint_of_pod(object),
        Kind::Profile if object["kind"] == "ServiceAccount" => {
            objects::service_account_profile(object)
        }
        Kind::Profile => objects::namespace_profile(object),
        Kind::Node => objects::node_of(object),
        _ => Some(from_api(kind, object)),
    }
}

/// The key of a stored value of `kind`.
fn key_of(kind: Kind, value: &Value) -> Option<Key> {
    let name = value["metadata"]["name"].as_str()?;
    Some(if kind.namespaced() {
        Key::namespaced(
            kind,
            value["metadata"]["namespace"].as_str().unwrap_or("default"),
            name,
        )
    } else {
        Key::cluster(kind, name)
    })
}

/// The key of the endpoint a pod had, even when it has none any more (None: never had one).
fn endpoint_key_of_pod(pod: &Value) -> Option<Key> {
    let node = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty())?;
    let name = pod["metadata"]["name"].as_str()?;
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    Some(Key::namespaced(
        Kind::WorkloadEndpoint,
        namespace,
        &crate::kubernetes::workload_endpoint_name([node, "k8s", name, "eth0"]),
    ))
}

impl KubeStore {
    /// Connects with the kubeconfig at `kubeconfig`, else KUBECONFIG, `~/.kube/config` or the
    /// pod's service account, and checks that the API server answers within
    /// [`CALL_TIMEOUT`].
    pub async fn connect(
        url: &str,
        kubeconfig: Option<PathBuf>,
    ) -> Result<KubeStore, DatastoreError> {
        let unavailable = |reason: String| DatastoreError::Unavailable {
            url: url.to_string(),
            reason,
        };
        let config = match kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(&path)
                    .map_err(|err| unavailable(format!("{}: {err}", path.display())))?;
                kube::Config::from_custom_kubeconfig(file, &Default::default())
                    .await
                    .map_err(|err| unavailable(format!("{}: {err}", path.display())))?
            }
            None => kube::Config::infer().await.map_err(|err| {
                unavailable(format!("no kubeconfig or in-cluster account: {err}"))
            })?,
        };
        let mut config = config;
        config.connect_timeout = Some(CALL_TIMEOUT);
        let server = config.cluster_url.to_string();
        let client = client_of(config).map_err(|err| unavailable(format!("{server}: {err}")))?;
        match tokio::time::timeout(CALL_TIMEOUT, client.apiserver_version()).await {
            Ok(Ok(_)) => Ok(KubeStore {
                url: url.to_string(),
                client,
                last_list: Arc::default(),
            }),
            Ok(Err(err)) => Err(unavailable(format!("{server}: {}", describe(&err)))),
            Err(_) => Err(unavailable(format!(
                "{server}: no answer within {}s",
                CALL_TIMEOUT.as_secs()
            ))),
        }
    }

    /// The API client (for what is not a Twill kind, e.g. a Lease).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    fn api(&self, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
        let kube_resource = KubeResource {
            group: resource.group.to_string(),
            version: resource.version.to_string(),
            api_version: resource.api_version(),
            kind: resource.kind.to_string(),
            plural: resource.plural.to_string(),
        };
        match namespace.filter(|_| resource.namespaced) {
            Some(namespace) => Api::namespaced_with(self.client.clone(), namespace, &kube_resource),
            None => Api::all_with(self.client.clone(), &kube_resource),
        }
    }

    fn error(&self, key: Option<&Key>, err: kube::Error) -> DatastoreError {
        match (&err, key) {
            (kube::Error::Api(status), Some(key)) if status.code == 404 => {
                DatastoreError::NotFound { key: key.clone() }
            }
            (kube::Error::Api(status), Some(key))
                if status.code == 409 && status.reason == "AlreadyExists" =>
            {
                DatastoreError::AlreadyExists { key: key.clone() }
            }
            (kube::Error::Api(status), _) if status.code == 410 => DatastoreError::RevisionTooOld {
                requested: 0,
                compacted: 0,
            },
            (kube::Error::Api(status), _) if status.code == 422 || status.code == 400 => {
                DatastoreError::Backend {
                    url: self.url.clone(),
                    reason: format!("the API server refused it: {}", status.message),
                }
            }
            (kube::Error::Api(status), _) => DatastoreError::Backend {
                url: self.url.clone(),
                reason: format!("{} ({}): {}", status.code, status.reason, status.message),
            },
            _ => DatastoreError::Unavailable {
                url: self.url.clone(),
                reason: describe(&err),
            },
        }
    }

    /// Runs one call with the timeout.
    async fn call<T>(
        &self,
        key: Option<&Key>,
        work: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, DatastoreError> {
        match tokio::time::timeout(CALL_TIMEOUT * 2, work).await {
            Ok(result) => result.map_err(|err| self.error(key, err)),
            Err(_) => Err(DatastoreError::Unavailable {
                url: self.url.clone(),
                reason: format!("no answer within {}s", (CALL_TIMEOUT * 2).as_secs()),
            }),
        }
    }

    /// `work` within the bound [`KubeStore::call`] gives a call, its API errors left to the
    /// caller (a 409 or 404 that means something there).
    async fn bounded<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<Result<T, kube::Error>, DatastoreError> {
        tokio::time::timeout(CALL_TIMEOUT * 2, work)
            .await
            .map_err(|_| DatastoreError::Unavailable {
                url: self.url.clone(),
                reason: format!("no answer within {}s", (CALL_TIMEOUT * 2).as_secs()),
            })
    }

    /// Every object of a source (all pages); the list's revision.
    async fn list_source(
        &self,
        source: &ApiResource,
        namespace: Option<&str>,
    ) -> Result<(Vec<Value>, Revision), DatastoreError> {
        let api = self.api(source, namespace);
        let mut objects = Vec::new();
        let mut params = ListParams::default().limit(PAGE);
        loop {
            let page = self.call(None, api.list(&params)).await?;
            let revision = page
                .metadata
                .resource_version
                .as_deref()
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            for item in page.items {
                let mut object = serde_json::to_value(item).map_err(|err| self.corrupt(err))?;
                // A list's items carry no apiVersion and kind (watch events do): give them
                // theirs, so an object reads the same however it came.
                if let Some(map) = object.as_object_mut() {
                    map.entry("apiVersion")
                        .or_insert_with(|| source.api_version().into());
                    map.entry("kind").or_insert_with(|| source.kind.into());
                }
                objects.push(object);
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok((objects, revision)),
            }
        }
    }

    fn corrupt(&self, err: impl std::fmt::Display) -> DatastoreError {
        DatastoreError::Corrupt {
            url: self.url.clone(),
            reason: err.to_string(),
        }
    }

    fn stored(&self, kind: Kind, object: &Value) -> Option<Stored> {
        let value = derive(kind, object)?;
        Some(Stored {
            key: key_of(kind, &value)?,
            value,
            revision: revision_of(object).unwrap_or(0),
        })
    }

    /// The API object behind `key` (for derived kinds, the one it is derived from).
    async fn source_object(&self, key: &Key) -> Result<Option<Value>, DatastoreError> {
        let namespace = key.namespace.as_deref();
        let (source, name) = match (key.kind, served(key.kind)) {
            (_, Served::Crd(resource) | Served::Native(resource)) => (resource, key.name.clone()),
            (Kind::Node, _) => (NODES, key.name.clone()),
            (Kind::Profile, _) => match key.name.split_once('.') {
                Some(("kns", namespace_name)) => (NAMESPACES, namespace_name.to_string()),
                Some(("ksa", rest)) => {
                    let Some((account_namespace, account)) = rest.split_once('.') else {
                        return Ok(None);
                    };
                    let api = self.api(&SERVICE_ACCOUNTS, Some(account_namespace));
                    return self
                        .call(Some(key), api.get_opt(account))
                        .await?
                        .map(|o| serde_json::to_value(o).map_err(|e| self.corrupt(e)))
                        .transpose();
                }
                _ => return Ok(None),
            },
            (Kind::WorkloadEndpoint, _) => {
                // Its name is the pod's node and name, escaped: the pod, if it is that one.
                let Some([_, orchestrator, pod, _]) =
                    crate::kubernetes::workload_endpoint_parts(&key.name)
                else {
                    return Ok(None);
                };
                if orchestrator != "k8s" {
                    return Ok(None);
                }
                let api = self.api(&PODS, namespace);
                let pod = self
                    .call(Some(key), api.get_opt(&pod))
                    .await?
                    .map(|o| serde_json::to_value(o).map_err(|e| self.corrupt(e)))
                    .transpose()?;
                return Ok(pod.filter(|pod| endpoint_key_of_pod(pod).as_ref() == Some(key)));
            }
            (other, _) => unreachable!("{other:?} is served"),
        };
        let api = self.api(&source, namespace);
        self.call(Some(key), api.get_opt(&name))
            .await?
            .map(|o| serde_json::to_value(o).map_err(|e| self.corrupt(e)))
            .transpose()
    }

    /// An object to send for `key`: its name and namespace are the key's, whatever the value
    /// says.
    fn dynamic(&self, key: &Key, mut object: Value) -> Result<DynamicObject, DatastoreError> {
        if let Some(metadata) = object["metadata"].as_object_mut() {
            metadata.insert("name".into(), key.name.clone().into());
            match &key.namespace {
                Some(namespace) => {
                    metadata.insert("namespace".into(), namespace.clone().into());
                }
                None => {
                    metadata.remove("namespace");
                }
            }
        }
        serde_json::from_value(object).map_err(|err| self.corrupt(err))
    }

    /// One write: its revision.
    async fn write(&self, op: TxnOp) -> Result<Revision, DatastoreError> {
        // An unconditional update of a Pod is merged onto the Pod as it is: when the kubelet
        // wrote it in between (its status), merge again rather than report a conflict nobody
        // asked for.
        if matches!(&op, TxnOp::Update { key, expected: None, .. } if key.kind == Kind::Pod) {
            for _ in 0..4 {
                match self.write_once(op.clone()).await {
                    Err(DatastoreError::Conflict { .. }) => continue,
                    other => return other,
                }
            }
        }
        self.write_once(op).await
    }

    /// One write, once.
    async fn write_once(&self, op: TxnOp) -> Result<Revision, DatastoreError> {
        let key = op.key().clone();
        let resource = match (key.kind, served(key.kind)) {
            (_, Served::Crd(resource) | Served::Native(resource)) => resource,
            (Kind::Node, _) => return self.write_node(op).await,
            (_, Served::Derived { from }) => {
                return Err(DatastoreError::NotWritable {
                    key,
                    reason: format!("on the Kubernetes datastore it is derived from {from}"),
                })
            }
        };
        let api = self.api(&resource, key.namespace.as_deref());
        let written = match op {
            TxnOp::Create { value, .. } => {
                let object = self.dynamic(&key, to_api(key.kind, &value, None))?;
                self.call(Some(&key), api.create(&PostParams::default(), &object))
                    .await?
            }
            TxnOp::Update {
                value, expected, ..
            } => {
                // A Pod's stored form is a projection: the update goes onto the whole object.
                let object = if key.kind == Kind::Pod {
                    let current = self
                        .call(Some(&key), api.get_opt(&key.name))
                        .await?
                        .ok_or_else(|| DatastoreError::NotFound { key: key.clone() })?;
                    let current = serde_json::to_value(current).map_err(|e| self.corrupt(e))?;
                    let actual = revision_of(&current).unwrap_or(0);
                    if let Some(expected) = expected.filter(|e| *e != actual) {
                        return Err(DatastoreError::Conflict {
                            key,
                            expected,
                            actual,
                        });
                    }
                    let merged = objects::pod_update(&current, &value).map_err(|reason| {
                        DatastoreError::NotWritable {
                            key: key.clone(),
                            reason,
                        }
                    })?;
                    self.dynamic(&key, merged)?
                } else {
                    // The API server checks the precondition itself (409); only an
                    // unconditional write needs the current version (a custom resource's
                    // update must name one).
                    let precondition = match expected {
                        Some(expected) => expected,
                        None => self.current_revision(&api, &key).await?,
                    };
                    self.dynamic(&key, to_api(key.kind, &value, Some(precondition)))?
                };
                let precondition = object
                    .metadata
                    .resource_version
                    .as_deref()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                match self
                    .bounded(api.replace(&key.name, &PostParams::default(), &object))
                    .await?
                {
                    Ok(written) => written,
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        let actual = self.current_revision(&api, &key).await?;
                        return Err(DatastoreError::Conflict {
                            key,
                            expected: precondition,
                            actual,
                        });
                    }
                    Err(kube::Error::Api(status)) if status.code == 404 => {
                        return Err(DatastoreError::NotFound { key });
                    }
                    Err(err) => return Err(self.error(Some(&key), err)),
                }
            }
            TxnOp::Delete { expected, .. } => {
                let mut params = DeleteParams::default();
                if let Some(expected) = expected {
                    params.preconditions = Some(Preconditions {
                        resource_version: Some(expected.to_string()),
                        uid: None,
                    });
                }
                // Twill deletes a Pod only where it stands in for the kubelet (the lab), once
                // the pod's sandbox is gone: at once, as a kubelet's final confirmation does
                // (a graceful deletion would wait for a kubelet that is not there).
                if key.kind == Kind::Pod {
                    params.grace_period_seconds = Some(0);
                }
                return match self.bounded(api.delete(&key.name, &params)).await? {
                    Ok(_) => Ok(0),
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        let actual = self.current_revision(&api, &key).await?;
                        Err(DatastoreError::Conflict {
                            key,
                            expected: expected.unwrap_or(-1),
                            actual,
                        })
                    }
                    Err(err) => Err(self.error(Some(&key), err)),
                };
            }
        };
        let value = serde_json::to_value(written).map_err(|e| self.corrupt(e))?;
        Ok(revision_of(&value).unwrap_or(0))
    }

    async fn current_revision(
        &self,
        api: &Api<DynamicObject>,
        key: &Key,
    ) -> Result<Revision, DatastoreError> {
        let current = self
            .call(Some(key), api.get_opt(&key.name))
            .await?
            .ok_or_else(|| DatastoreError::NotFound { key: key.clone() })?;
        Ok(current
            .metadata
            .resource_version
            .as_deref()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0))
    }

    /// Twill's Node lives in a Kubernetes Node's annotations: creating one creates the
    /// Kubernetes Node (as a kubelet registering would), updating it rewrites the annotations
    /// under the Node's resourceVersion.
    async fn write_node(&self, op: TxnOp) -> Result<Revision, DatastoreError> {
        let key = op.key().clone();
        let api = self.api(&NODES, None);
        let (base, value, precondition) = match op {
            TxnOp::Delete { expected, .. } => {
                let mut params = DeleteParams::default();
                if let Some(expected) = expected {
                    params.preconditions = Some(Preconditions {
                        resource_version: Some(expected.to_string()),
                        uid: None,
                    });
                }
                return self
                    .call(Some(&key), api.delete(&key.name, &params))
                    .await
                    .map(|_| 0);
            }
            TxnOp::Create { value, .. } => (
                serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": key.name}}),
                value,
                None,
            ),
            TxnOp::Update {
                value, expected, ..
            } => {
                let current = self
                    .call(Some(&key), api.get_opt(&key.name))
                    .await?
                    .ok_or_else(|| DatastoreError::NotFound { key: key.clone() })?;
                let current = serde_json::to_value(current).map_err(|e| self.corrupt(e))?;
                let actual = revision_of(&current).unwrap_or(0);
                if expected.is_some_and(|e| e != actual) {
                    return Err(DatastoreError::Conflict {
                        key,
                        expected: expected.unwrap_or(0),
                        actual,
                    });
                }
                (current, value, Some(actual))
            }
        };
        let mut object = objects::annotate_node(&base, &value);
        match precondition {
            Some(version) => object["metadata"]["resourceVersion"] = version.to_string().into(),
            None => {
                if let Some(map) = object["metadata"].as_object_mut() {
                    map.remove("resourceVersion");
                }
            }
        }
        let object = self.dynamic(&key, object)?;
        let written = match precondition {
            None => {
                self.call(Some(&key), api.create(&PostParams::default(), &object))
                    .await?
            }
            Some(expected) => match self
                .bounded(api.replace(&key.name, &PostParams::default(), &object))
                .await?
            {
                Ok(written) => written,
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    return Err(DatastoreError::Conflict {
                        key,
                        expected,
                        actual: -1,
                    })
                }
                Err(err) => return Err(self.error(Some(&key), err)),
            },
        };
        let value = serde_json::to_value(written).map_err(|e| self.corrupt(e))?;
        Ok(revision_of(&value).unwrap_or(0))
    }
}

/// The useful text of a kube error, causes included.
fn describe(err: &kube::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

#[async_trait::async_trait]
impl super::Datastore for KubeStore {
    fn url(&self) -> &str {
        &self.url
    }

    async fn get(&self, key: &Key) -> Result<Option<Stored>, DatastoreError> {
        let Some(object) = self.source_object(key).await? else {
            return Ok(None);
        };
        Ok(self
            .stored(key.kind, &object)
            .filter(|stored| stored.key == *key))
    }

    async fn list(
        &self,
        kind: Option<Kind>,
        namespace: Option<&str>,
    ) -> Result<Listing, DatastoreError> {
        let sources = match kind {
            Some(kind) => sources_of(kind),
            None => all_sources(),
        };
        let mut items = Vec::new();
        let mut revisions = BTreeMap::new();
        for source in &sources {
            let (objects, revision) = self.list_source(source, namespace).await?;
            revisions.insert(api_key(source), revision);
            let kinds: Vec<Kind> = kinds_of(source)
                .into_iter()
                .filter(|k| kind.is_none_or(|wanted| wanted == *k))
                .collect();
            for object in &objects {
                for kind in &kinds {
                    items.extend(self.stored(*kind, object).filter(|s| {
                        namespace.is_none() || s.key.namespace.as_deref() == namespace
                    }));
                }
            }
        }
        items.sort_by(|a, b| a.key.cmp(&b.key));
        let revision = revisions.values().copied().max().unwrap_or(0);
        if kind.is_none() && namespace.is_none() {
            if let Ok(mut last) = self.last_list.lock() {
                *last = Some((revision, revisions));
            }
        }
        Ok(Listing { items, revision })
    }

    fn multi_object_transactions(&self) -> bool {
        false
    }

    fn endpoints_from_pods(&self) -> bool {
        true
    }

    async fn annotate(
        &self,
        key: &Key,
        annotations: &BTreeMap<String, Option<String>>,
        expected: Option<Revision>,
    ) -> Result<Revision, DatastoreError> {
        let resource = match served(key.kind) {
            Served::Crd(resource) | Served::Native(resource) => resource,
            Served::Derived { from } => {
                return Err(DatastoreError::NotWritable {
                    key: key.clone(),
                    reason: format!("on the Kubernetes datastore it is derived from {from}"),
                })
            }
        };
        let api = self.api(&resource, key.namespace.as_deref());
        let mut metadata = serde_json::json!({"annotations": annotations});
        if let Some(expected) = expected {
            // A merge patch carrying resourceVersion is refused (409) if the object moved.
            metadata["resourceVersion"] = expected.to_string().into();
        }
        let patch = kube::api::Patch::Merge(serde_json::json!({"metadata": metadata}));
        match self
            .bounded(api.patch(&key.name, &kube::api::PatchParams::default(), &patch))
            .await?
        {
            Ok(written) => {
                let value = serde_json::to_value(written).map_err(|e| self.corrupt(e))?;
                Ok(revision_of(&value).unwrap_or(0))
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let actual = self.current_revision(&api, key).await?;
                Err(DatastoreError::Conflict {
                    key: key.clone(),
                    expected: expected.unwrap_or(-1),
                    actual,
                })
            }
            Err(err) => Err(self.error(Some(key), err)),
        }
    }

    async fn txn(&self, mut ops: Vec<TxnOp>) -> Result<Revision, DatastoreError> {
        if ops.len() != 1 {
            return Err(DatastoreError::InvalidTxn {
                reason: format!(
                    "{} operations: the Kubernetes API has no multi-object transaction, so \
                     the Kubernetes datastore writes one object at a time",
                    ops.len()
                ),
            });
        }
        self.write(ops.remove(0)).await
    }

    async fn watch(&self, kind: Option<Kind>, after: Revision) -> Result<Watch, DatastoreError> {
        let sources = match kind {
            Some(kind) => sources_of(kind),
            None => all_sources(),
        };
        let starts: BTreeMap<ApiKey, Revision> = match self.last_list.lock() {
            Ok(last) => match last.as_ref() {
                Some((revision, per_source)) if *revision == after && kind.is_none() => {
                    per_source.clone()
                }
                _ => BTreeMap::new(),
            },
            Err(_) => BTreeMap::new(),
        };
        let (sender, receiver) = tokio::sync::mpsc::channel(256);
        let mut tasks = Vec::new();
        for source in sources {
            let start = starts.get(&api_key(&source)).copied().unwrap_or(after);
            let kinds: Vec<Kind> = kinds_of(&source)
                .into_iter()
                .filter(|k| kind.is_none_or(|wanted| wanted == *k))
                .collect();
            tasks.push(tokio::spawn(watch_source(
                self.clone(),
                source,
                kinds,
                start,
                sender.clone(),
            )));
        }
        let task = tokio::spawn(async move {
            // The watch lives while its sources do; dropping it aborts this task, whose
            // guard aborts them.
            let _guard = AbortOnDrop(tasks);
            std::future::pending::<()>().await;
        });
        Ok(Watch::new(receiver, task))
    }

    async fn compact(&self, _revision: Revision) -> Result<(), DatastoreError> {
        Err(DatastoreError::Backend {
            url: self.url.clone(),
            reason: "the Kubernetes datastore's history is compacted by the API server's etcd"
                .into(),
        })
    }
}

/// Aborts tasks when dropped.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

type Sender = tokio::sync::mpsc::Sender<Result<Vec<Event>, DatastoreError>>;

/// Watches one source from `start`, converting its events into events of `kinds`; reconnects
/// by itself (reporting [`DatastoreError::Interrupted`] once per outage, then an empty batch
/// when it is back); ends on `410 Gone` (RevisionTooOld) or when the receiver goes.
async fn watch_source(
    store: KubeStore,
    source: ApiResource,
    kinds: Vec<Kind>,
    start: Revision,
    sender: Sender,
) {
    let api = store.api(&source, None);
    let mut revision = start;
    let mut interrupted = false;
    let mut pause = Duration::from_millis(100);
    loop {
        let stream = match api
            .watch(&WatchParams::default().timeout(280), &revision.to_string())
            .await
        {
            Ok(stream) => stream,
            Err(kube::Error::Api(status)) if status.code == 410 => {
                let _ = sender
                    .send(Err(DatastoreError::RevisionTooOld {
                        requested: revision,
                        compacted: 0,
                    }))
                    .await;
                return;
            }
            Err(err) => {
                if !interrupted {
                    interrupted = true;
                    let reason = format!("watching {}: {}", source.plural, describe(&err));
                    if sender
                        .send(Err(DatastoreError::Interrupted {
                            url: store.url.clone(),
                            reason,
                        }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if interrupted {
            interrupted = false;
            if sender.send(Ok(Vec::new())).await.is_err() {
                return;
            }
        }
        pause = Duration::from_millis(100);
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            let (event_type, object) = match item {
                Ok(WatchEvent::Added(o)) => (EventType::Added, o),
                Ok(WatchEvent::Modified(o)) => (EventType::Modified, o),
                Ok(WatchEvent::Deleted(o)) => (EventType::Deleted, o),
                Ok(WatchEvent::Bookmark(bookmark)) => {
                    if let Ok(r) = bookmark.metadata.resource_version.parse() {
                        revision = r;
                    }
                    continue;
                }
                Ok(WatchEvent::Error(status)) if status.code == 410 => {
                    let _ = sender
                        .send(Err(DatastoreError::RevisionTooOld {
                            requested: revision,
                            compacted: 0,
                        }))
                        .await;
                    return;
                }
                // Anything else ends this connection: watch again from where it was.
                Ok(WatchEvent::Error(_)) | Err(_) => break,
            };
            let Ok(object) = serde_json::to_value(object) else {
                continue;
            };
            let Some(object_revision) = revision_of(&object) else {
                continue;
            };
            revision = object_revision;
            let events = events_of(&kinds, event_type, &object, object_revision);
            if !events.is_empty() && sender.send(Ok(events)).await.is_err() {
                return;
            }
        }
    }
}

/// The events of `kinds` one source event stands for: a derived object that exists after an
/// Added or Modified event is Added/Modified; one that does not (a pod that finished or lost
/// its address) is Deleted.
fn events_of(
    kinds: &[Kind],
    event_type: EventType,
    object: &Value,
    revision: Revision,
) -> Vec<Event> {
    let mut events = Vec::new();
    for &kind in kinds {
        let derived = match event_type {
            EventType::Deleted => None,
            _ => derive(kind, object),
        };
        let key = match &derived {
            Some(value) => key_of(kind, value),
            None if kind == Kind::WorkloadEndpoint => endpoint_key_of_pod(object),
            None => derive(kind, object).and_then(|v| key_of(kind, &v)),
        };
        let Some(key) = key else { continue };
        let (event_type, value) = match (event_type, derived) {
            (EventType::Deleted, _) => (EventType::Deleted, derive(kind, object)),
            (_, None) => (EventType::Deleted, None),
            (event_type, Some(value)) => (event_type, Some(value)),
        };
        events.push(Event {
            event_type,
            key,
            revision,
            value,
        });
    }
    events
}
