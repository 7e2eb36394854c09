//! Twill on a real Kubernetes API server (kube-apiserver v1.34 built from the Go module proxy,
//! on its own etcd): the CRDs generated from the resource model install and make the server
//! refuse what they can; `kubectl apply` takes every example unchanged.

use std::path::{Path, PathBuf};

use twill_interop_tests::kube::ApiServer;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("interop-tests is in the workspace")
        .to_path_buf()
}

fn crds() -> PathBuf {
    workspace().join("deploy/kubernetes/crds")
}

/// Every YAML file of examples/ that holds resources (not topologies).
fn example_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for folder in ["calico-policies", "seed-walkthrough"] {
        for entry in std::fs::read_dir(workspace().join("examples").join(folder)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_every_example_and_the_crds_refuse_what_they_can() {
    let server = ApiServer::start(&crds()).await;
    for namespace in ["backend", "frontend", "database", "production"] {
        server.kubectl(&["create", "namespace", namespace], None);
    }
    // No controller manager runs beside this API server: the account pods need is made here.
    server.kubectl(
        &["create", "serviceaccount", "default", "-n", "default"],
        None,
    );
    for file in example_files() {
        let (code, stdout, stderr) = server.kubectl_status(
            &[
                "apply",
                "--validate=strict",
                "-f",
                &file.display().to_string(),
            ],
            None,
        );
        assert_eq!(code, 0, "{}: {stdout}{stderr}", file.display());
    }
    let listed = server.kubectl(&["get", "globalnetworkpolicies", "-o", "name"], None);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    // Types, enums and ports the schema knows are refused by the API server itself.
    for (document, wanted) in [
        (
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/16, vxlanMode: Sometimes}\n",
            "spec.vxlanMode: Unsupported value: \"Sometimes\"",
        ),
        (
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec: {order: fast}\n",
            "spec.order: Invalid value: \"string\"",
        ),
        (
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata: {name: s}\nspec: {nets: [10.0.0.0/8], colour: red}\n",
            "unknown field \"spec.colour\"",
        ),
    ] {
        let (code, stdout, stderr) =
            server.kubectl_status(&["apply", "--validate=strict", "-f", "-"], Some(document));
        assert_ne!(code, 0, "accepted: {document}: {stdout}");
        assert!(stderr.contains(wanted), "{document}: {stderr}");
    }
}
