//! The CNI plugin's credentials on a Kubernetes install: a kubeconfig for the plugin's own
//! ServiceAccount (`twill-cni-plugin`), holding a token from the TokenRequest API, written
//! into the host's CNI configuration directory where the plugin (run by the container runtime,
//! outside any pod) can read it.
//!
//! The plugin never gets the node agent's token: twill-node's account may ask for a token of
//! `twill-cni-plugin` and nothing else (deploy/kubernetes/rbac.yaml), so the file on the host
//! grants only the plugin's narrower rights. install-cni writes the file once; twill-node
//! writes it again when a third of the token's life is left ([`CniCredentials::renew_due`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;

/// The plugin's ServiceAccount and its namespace.
pub const CNI_ACCOUNT: (&str, &str) = ("twill-system", "twill-cni-plugin");
/// How long a plugin token lives (Calico's CNI token: 24 h).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Where a pod finds its cluster's CA.
pub const IN_CLUSTER_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// A written kubeconfig and when its token expires.
#[derive(Debug, Clone)]
pub struct CniCredentials {
    /// The kubeconfig file.
    pub path: PathBuf,
    /// When its token was issued (as this process saw it).
    pub issued: SystemTime,
    /// When its token expires (as the API server said).
    pub expires: SystemTime,
}

impl CniCredentials {
    /// A third of the token's life is left: time to write a new one.
    pub fn renew_due(&self, now: SystemTime) -> bool {
        let life = self
            .expires
            .duration_since(self.issued)
            .unwrap_or(Duration::ZERO);
        match self.expires.duration_since(now) {
            Ok(left) => left < life / 3,
            Err(_) => true,
        }
    }
}

/// Asks the API server for a token of the plugin's account and writes `path` (mode 0600,
/// replaced atomically) with `server` and the CA of `ca_file`.
pub async fn write_cni_kubeconfig(
    client: &kube::Client,
    server: &str,
    ca_file: &Path,
    path: &Path,
) -> Result<CniCredentials, CredentialsError> {
    let (namespace, account) = CNI_ACCOUNT;
    let api: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(TOKEN_LIFETIME.as_secs() as i64),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    #[allow(clippy::disallowed_methods)] // An edge: it talks to the API server.
    let issued = SystemTime::now();
    let answer = api
        .create_token_request(account, &Default::default(), &request)
        .await
        .map_err(|err| {
            CredentialsError(format!(
                "cannot get a token for the service account {namespace}/{account}: {err}"
            ))
        })?;
    let status = answer.status.ok_or_else(|| {
        CredentialsError("the API server answered the token request without a token".into())
    })?;
    let expires = SystemTime::UNIX_EPOCH
        + Duration::from_secs(status.expiration_timestamp.0.as_second().max(0) as u64);
    let ca = std::fs::read(ca_file).map_err(|err| {
        CredentialsError(format!(
            "cannot read the cluster CA {}: {err}",
            ca_file.display()
        ))
    })?;
    let text = kubeconfig_text(server, &ca, &status.token);
    write_private(path, text.as_bytes())?;
    Ok(CniCredentials {
        path: path.to_path_buf(),
        issued,
        expires,
    })
}

/// A kubeconfig with one cluster (`server`, the CA inline) and one token user.
pub fn kubeconfig_text(server: &str, ca_pem: &[u8], token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "# Written by Twill (install-cni, renewed by twill-node) for the twill CNI plugin.\n\
         apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: local\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n\
         - name: twill-cni-plugin\n  user:\n    token: {token}\n\
         contexts:\n\
         - name: twill-cni-plugin\n  context:\n    cluster: local\n    user: twill-cni-plugin\n\
         current-context: twill-cni-plugin\n"
    )
}

/// Writes `path` through a temporary file in the same directory (mode 0600) and a rename:
/// a reader sees the old file or the new one, never half of one.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), CredentialsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |what: &str, path: &Path, err: std::io::Error| {
        CredentialsError(format!("cannot {what} {}: {err}", path.display()))
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| fail("create", dir, e))?;
    let name = path
        .file_name()
        .ok_or_else(|| CredentialsError(format!("{} names no file", path.display())))?
        .to_string_lossy();
    let partial = dir.join(format!(".{name}.partial"));
    // A partial file left behind keeps whatever mode it had: start from none.
    let _ = std::fs::remove_file(&partial);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| fail("write", &partial, e))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(|e| fail("write", &partial, e))?;
    std::fs::rename(&partial, path).map_err(|e| fail("replace", path, e))
}

/// Why the credentials could not be written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CredentialsError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_with_a_third_of_the_life_left() {
        let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let credentials = CniCredentials {
            path: PathBuf::new(),
            issued,
            expires: issued + Duration::from_secs(3000),
        };
        assert!(!credentials.renew_due(issued + Duration::from_secs(1999)));
        assert!(credentials.renew_due(issued + Duration::from_secs(2001)));
        assert!(credentials.renew_due(issued + Duration::from_secs(4000)));
    }

    #[test]
    fn the_kubeconfig_is_one_kube_reads() {
        let text = kubeconfig_text("https://10.96.0.1:443", b"PEM", "abc.def");
        let config: kube::config::Kubeconfig = serde_yaml::from_str(&text).unwrap();
        let cluster = config.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://10.96.0.1:443"));
        assert_eq!(cluster.certificate_authority_data.as_deref(), Some("UEVN"));
        assert_eq!(config.current_context.as_deref(), Some("twill-cni-plugin"));
        let user = config.auth_infos[0].auth_info.as_ref().unwrap();
        assert!(user.token.is_some());
    }
}
