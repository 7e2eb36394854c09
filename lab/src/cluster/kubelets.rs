//! The Kubernetes lab (`lab up --kubernetes`): the control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler) in the underlay namespace; per node its own
//! containerd, kubelet and kube-proxy in the node's network namespace and a private mount
//! namespace; Twill installed as users install it (its images imported into each node's
//! containerd, then `deploy/kubernetes/twill.yaml` applied); topology pods as Kubernetes Pods.
//!
//! Each node's mount namespace is held by a `twillctl lab node-ns` process (see
//! [`hold_node_namespace`]): a sysfs of the node's network namespace with the machine's cgroup
//! hierarchies mounted again on it (`ip netns exec` would hide them from the kubelet), and
//! the host paths a CNI install writes (`/etc/cni/net.d`, `/opt/cni/bin`, `/var/lib/cni`,
//! `/var/lib/twill`, `/run/twill`, logs) bound to the node's own directories, so three nodes on
//! one machine each see their own. Empty mount points the machine lacks are made once and
//! removed by `lab down`. The node's state (containerd's images, the kubelet's pods) lives on
//! disk under [`DISK_ROOT`].

use std::os::unix::process::CommandExt;
use std::process::Command;

use super::pods::workload_of;
use super::*;
use crate::image::{Image, Written};
use crate::kube::API_PORT;

/// Where the Kubernetes lab keeps its nodes' disks (containerd's images and snapshots).
pub const DISK_ROOT: &str = "/var/lib/twill-lab";
/// The mount points the Kubernetes labs had to make on this machine, outermost first: shared
/// by every lab (a lab that comes up second finds them made), removed by the last one down.
const CREATED_DIRS: &str = "/var/lib/twill-lab.created-dirs";
/// The manifest users apply.
pub const MANIFEST: &str = include_str!("../../../deploy/kubernetes/twill.yaml");
/// The pool the manifest's ConfigMap creates.
pub const KUBE_POD_POOL: &str = "10.244.0.0/16";
/// The sandbox image containerd runs for every pod.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";
/// The topology pods' image.
pub const RESPONDER_IMAGE: &str = "twill/responder:lab";
/// The cluster DNS image, built locally from CoreDNS's Go module (the version kubeadm
/// installs with Kubernetes 1.34).
pub const COREDNS_IMAGE: &str = "registry.k8s.io/coredns/coredns:v1.12.1";
/// The cluster DNS, as kubeadm installs it (`kube-dns` in `kube-system` on 10.96.0.10), its
/// Corefile without `forward`: the lab sends nothing beyond its own namespaces.
const DNS_MANIFEST: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
  - apiGroups: [""]
    resources: [endpoints, services, pods, namespaces]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health {
            lameduck 5s
        }
        ready
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 30
        }
        cache 30
        loop
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      tolerations: [{key: CriticalAddonsOnly, operator: Exists}]
      containers:
        - name: coredns
          image: registry.k8s.io/coredns/coredns:v1.12.1
          imagePullPolicy: IfNotPresent
          args: ["-conf", "/etc/coredns/Corefile"]
          ports:
            - {name: dns, containerPort: 53, protocol: UDP}
            - {name: dns-tcp, containerPort: 53, protocol: TCP}
            - {name: metrics, containerPort: 9153, protocol: TCP}
          readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
          livenessProbe: {httpGet: {path: /health, port: 8080}, periodSeconds: 10, failureThreshold: 5}
          securityContext:
            allowPrivilegeEscalation: false
            capabilities: {add: [NET_BIND_SERVICE], drop: [ALL]}
          volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
      volumes: [{name: config, configMap: {name: coredns}}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: 10.96.0.10
  selector: {k8s-app: kube-dns}
  ports:
    - {name: dns, port: 53, protocol: UDP}
    - {name: dns-tcp, port: 53, protocol: TCP}
    - {name: metrics, port: 9153, protocol: TCP}
"#;
/// Host paths a CNI install and twill-node's DaemonSet use, each bound to a directory of the
/// node's own (name under the node's disk).
const NODE_BINDS: &[(&str, &str)] = &[
    ("/etc/cni/net.d", "etc-cni-net.d"),
    ("/opt/cni/bin", "opt-cni-bin"),
    ("/var/lib/cni", "var-lib-cni"),
    ("/var/lib/twill", "var-lib-twill"),
    ("/var/log/twill", "var-log-twill"),
    ("/var/log/containers", "log-containers"),
    ("/var/log/pods", "log-pods"),
    ("/run/twill", "run-twill"),
];

/// The image tag of this build (the manifest's).
pub fn version_tag() -> String {
    format!("v{}", env!("CARGO_PKG_VERSION"))
}

/// Twill's images and the lab's, built from the binaries of `tools` (and Debian's packages)
/// into `dir`; `measure` also finds each layer's compressed size.
pub fn build_images(tools: &Tools, dir: &Path, measure: bool) -> anyhow::Result<Vec<Written>> {
    let bin = tools.cni_dir();
    let strip = crate::image::strip_cache(&bin);
    let tag = version_tag();
    let mut written = Vec::new();
    let mut node = Image::new("twill/node", &tag, &strip);
    for name in [
        "twill-node",
        "twill",
        "twill-ipam",
        "twill-install-cni",
        "twillctl",
    ] {
        node.binary(&bin.join(name), &format!("/usr/bin/{name}"))?;
    }
    // The reference plugins Calico's install also puts on a node: portmap (hostPort) and
    // loopback (every runtime's own call for a pod's `lo`).
    for plugin in ["portmap", "loopback"] {
        let path = Path::new(REFERENCE_CNI_DIR).join(plugin);
        if path.exists() {
            node.binary(&path, &format!("/usr/bin/{plugin}"))?;
        }
    }
    node.debian_packages(&["iptables", "ipset", "conntrack", "nftables", "iproute2"])?;
    // Debian picks iptables' flavour through alternatives; the image names nft as Debian's
    // default does (twill-node itself picks the backend the host uses: both are here).
    for tool in [
        "iptables",
        "iptables-save",
        "iptables-restore",
        "ip6tables",
        "ip6tables-save",
        "ip6tables-restore",
    ] {
        let flavoured = match tool.split_once('-') {
            Some((base, verb)) => format!("{base}-nft-{verb}"),
            None => format!("{tool}-nft"),
        };
        node.symlink(&format!("/usr/sbin/{tool}"), &flavoured);
    }
    node.entrypoint(&["/usr/bin/twill-node"]);
    written.push(node.write(dir, measure)?);
    let mut controllers = Image::new("twill/kube-controllers", &tag, &strip);
    controllers.binary(
        &bin.join("twill-kube-controllers"),
        "/usr/bin/twill-kube-controllers",
    )?;
    controllers.entrypoint(&["/usr/bin/twill-kube-controllers"]);
    written.push(controllers.write(dir, measure)?);
    let (pause_name, pause_tag) = PAUSE_IMAGE.rsplit_once(':').expect("a tag");
    let mut pause = Image::new(pause_name, pause_tag, &strip);
    pause.binary(&bin.join("twill-pause"), "/pause")?;
    pause.entrypoint(&["/pause"]);
    written.push(pause.write(dir, measure)?);
    let (name, tag) = RESPONDER_IMAGE.rsplit_once(':').expect("a tag");
    let mut responder = Image::new(name, tag, &strip);
    responder.binary(&tools.twillctl, "/usr/bin/twillctl")?;
    responder.entrypoint(&["/usr/bin/twillctl", "lab", "responder"]);
    written.push(responder.write(dir, measure)?);
    written.extend(stand_ins(dir, &strip, measure)?);
    let coredns = crate::kube::binaries().join("coredns");
    if coredns.exists() {
        let (name, tag) = COREDNS_IMAGE.rsplit_once(':').expect("a tag");
        let mut image = Image::new(name, tag, &strip);
        image
            .binary(&coredns, "/coredns")?
            .entrypoint(&["/coredns"]);
        written.push(image.write(dir, measure)?);
    }
    Ok(written)
}

/// Local stand-ins, from Debian's packages, for the public images the seed articles name:
/// `nginx:alpine` (nginx serving a welcome page on port 80, with curl, as the article execs
/// it) and `python:3.9-slim` (Debian's python3.11 as `python`). Built when the packages are
/// installed (make installs them); skipped otherwise, and a pod naming them then waits for its
/// image as it would without a registry.
pub fn stand_ins(dir: &Path, strip: &Path, measure: bool) -> anyhow::Result<Vec<Written>> {
    let installed = |package: &str| {
        Command::new("dpkg")
            .args(["-s", package])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let strip = strip.to_path_buf();
    let mut written = Vec::new();
    if installed("nginx") && installed("curl") {
        let mut nginx = Image::new("nginx", "alpine", &strip);
        nginx.debian_packages(&["nginx", "nginx-common", "curl"])?;
        base_files(&mut nginx);
        nginx
            .bytes("/etc/nginx/nginx.conf", NGINX_CONF.as_bytes(), 0o644)
            .bytes(
                "/usr/share/nginx/html/index.html",
                b"<!DOCTYPE html>\n<html><head><title>Welcome to nginx!</title></head>\n<body><h1>Welcome to nginx!</h1></body></html>\n",
                0o644,
            )
            .dir("var/lib/nginx")
            .dir("var/log/nginx")
            .cmd(&["nginx", "-g", "daemon off;"]);
        written.push(nginx.write(dir, measure)?);
    }
    if installed("python3.11-minimal") && installed("libpython3.11-stdlib") {
        let mut python = Image::new("python", "3.9-slim", &strip);
        python.debian_packages(&[
            "python3.11-minimal",
            "libpython3.11-minimal",
            "libpython3.11-stdlib",
        ])?;
        base_files(&mut python);
        python
            .symlink("/usr/bin/python", "python3.11")
            .symlink("/usr/bin/python3", "python3.11")
            .cmd(&["python3"]);
        written.push(python.write(dir, measure)?);
    }
    Ok(written)
}

/// nginx as the official image runs it: in the foreground, logs to the container's streams.
const NGINX_CONF: &str = "user nobody nogroup;\nworker_processes 1;\npid /run/nginx.pid;\n\
error_log /dev/stderr notice;\nevents { worker_connections 256; }\nhttp {\n  \
include /etc/nginx/mime.types;\n  access_log /dev/stdout;\n  server {\n    listen 80;\n    \
listen [::]:80;\n    root /usr/share/nginx/html;\n    index index.html;\n  }\n}\n";

/// The accounts and name service files a Debian userland expects.
fn base_files(image: &mut Image) {
    image
        .bytes(
            "/etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            0o644,
        )
        .bytes(
            "/etc/group",
            b"root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n",
            0o644,
        )
        .bytes("/etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n", 0o644)
        .dir("root");
}

/// Mount options `mount(8)` turns into flags; the rest go to the filesystem.
fn split_options(options: &str) -> (nix::mount::MsFlags, String) {
    use nix::mount::MsFlags;
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options.split(',') {
        match option {
            "rw" => {}
            "ro" => flags |= MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// Runs as `twillctl lab node-ns` inside `unshare --mount --propagation slave`, in the node's
/// network namespace: mounts the node's view (see the module's documentation) and then holds
/// the namespace until killed.
pub fn hold_node_namespace(node_disk: &Path) -> anyhow::Result<()> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let cgroups: Vec<Vec<String>> = mounts
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .filter(|f| f.len() >= 4 && f[1].starts_with("/sys/fs/cgroup"))
        .collect();
    umount2("/sys", MntFlags::MNT_DETACH).context("umount /sys")?;
    mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .context("mount the node's sysfs")?;
    for fields in &cgroups {
        let (source, target, kind) = (&fields[0], &fields[1], &fields[2]);
        let (mut flags, data) = split_options(&fields[3]);
        if kind == "tmpfs" {
            flags.remove(MsFlags::MS_RDONLY);
        } else if kind != "cgroup" && kind != "cgroup2" {
            continue;
        }
        std::fs::create_dir_all(target)?;
        mount(
            Some(source.as_str()),
            target.as_str(),
            Some(kind.as_str()),
            flags,
            (!data.is_empty()).then_some(data.as_str()),
        )
        .with_context(|| format!("mount {kind} on {target}"))?;
    }
    let _ = mount(
        Some("bpf"),
        "/sys/fs/bpf",
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    );
    for (host, own) in NODE_BINDS {
        mount(
            Some(&node_disk.join(own)),
            *host,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .with_context(|| format!("bind {} on {host}", node_disk.join(own).display()))?;
    }
    println!("ready");
    loop {
        std::thread::park();
    }
}

/// One node's files and processes.
struct KubeNode<'a> {
    lab: &'a Lab,
    node: &'a NodeState,
    disk: PathBuf,
}

impl KubeNode<'_> {
    fn socket(&self) -> PathBuf {
        self.disk.join("containerd/containerd.sock")
    }

    fn cgroup(&self) -> String {
        format!("twl-{}.{}", self.lab.name, self.node.name)
    }

    fn log(&self, name: &str) -> anyhow::Result<std::fs::File> {
        let logs = self.lab.dir().join("logs");
        std::fs::create_dir_all(&logs)?;
        Ok(std::fs::File::create(
            logs.join(format!("{}.{name}.log", self.node.name)),
        )?)
    }

    /// Starts a program in the node's network and mount namespaces (the holder's).
    fn spawn_inside(&self, holder: u32, name: &str, argv: &[String]) -> anyhow::Result<()> {
        let log = self.log(name)?;
        Command::new("nsenter")
            .args(["-t", &holder.to_string(), "--mount", "--net", "--"])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {name} on {}", self.node.name))?;
        Ok(())
    }

    /// Directories, the mount namespace's holder, containerd; returns the holder's PID.
    fn start_runtime(&self, restrict_oom: bool) -> anyhow::Result<u32> {
        for (host, own) in NODE_BINDS {
            std::fs::create_dir_all(self.disk.join(own))?;
            // Mount points the machine lacks: made here, each level recorded (outermost
            // first) so that `lab down` removes them again, innermost first.
            let mut missing: Vec<&Path> = Path::new(host)
                .ancestors()
                .take_while(|dir| !dir.exists())
                .collect();
            missing.reverse();
            if !missing.is_empty() {
                std::fs::create_dir_all(host)?;
                let record = Path::new(CREATED_DIRS);
                let mut text = std::fs::read_to_string(record).unwrap_or_default();
                for dir in missing {
                    text.push_str(&format!("{}\n", dir.display()));
                }
                std::fs::write(record, text)?;
            }
        }
        let twillctl = self.lab.tools.twillctl.display().to_string();
        let mut holder = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node.netns))
            .args(["--", "unshare", "--mount", "--propagation", "slave", "--"])
            .args([&twillctl, "lab", "node-ns", "--disk"])
            .arg(&self.disk)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(self.log("node-ns")?)
            .process_group(0)
            .spawn()
            .context("cannot start the node's mount namespace")?;
        let mut line = String::new();
        let stdout = holder.stdout.take().context("the holder's output")?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        if line.trim() != "ready" {
            bail!(
                "the mount namespace of {} did not come up (log: {})",
                self.node.name,
                self.lab.dir().join("logs").display()
            );
        }
        // nsenter and unshare exec their child: the process spawned is the holder.
        let holder = holder.id();
        let containerd = self.disk.join("containerd");
        std::fs::create_dir_all(&containerd)?;
        let config = format!(
            r#"version = 2
root = "{root}/root"
state = "{root}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{socket}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = {restrict_oom}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{root}/runc"
"#,
            root = containerd.display(),
            socket = self.socket().display(),
        );
        std::fs::write(containerd.join("config.toml"), config)?;
        self.spawn_inside(
            holder,
            "containerd",
            &[
                "containerd".into(),
                "--config".into(),
                containerd.join("config.toml").display().to_string(),
            ],
        )?;
        Ok(holder)
    }

    fn ctr(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new("ctr")
            .arg("-a")
            .arg(self.socket())
            .args(["-n", "k8s.io"])
            .args(args)
            .output()
    }

    /// Waits for containerd, then imports every image archive, as an operator does with
    /// `ctr images import` on a node without a registry.
    fn import_images(&self, images: &[Written]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ctr(&["version"]).is_ok_and(|o| o.status.success()) {
            if Instant::now() > deadline {
                bail!("containerd on {} did not start", self.node.name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for image in images {
            let path = image.path.display().to_string();
            let output = self.ctr(&["images", "import", &path])?;
            if !output.status.success() {
                bail!(
                    "ctr images import {path} on {}: {}",
                    self.node.name,
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
        }
        Ok(())
    }

    /// The cgroup the node's pods live under, in every hierarchy.
    fn make_cgroups(&self) -> anyhow::Result<()> {
        for hierarchy in cgroup_hierarchies() {
            let dir = hierarchy.join(self.cgroup());
            std::fs::create_dir_all(&dir)?;
            let cpus = dir.join("cpuset.cpus");
            if cpus.exists() && std::fs::read_to_string(&cpus)?.trim().is_empty() {
                std::fs::write(&cpus, std::fs::read(hierarchy.join("cpuset.cpus"))?)?;
                std::fs::write(
                    dir.join("cpuset.mems"),
                    std::fs::read(hierarchy.join("cpuset.mems"))?,
                )?;
            }
        }
        Ok(())
    }

    /// The kubelet and kube-proxy, with their certificates (made in the control plane's
    /// directory `ca_dir`, copied to the node's disk: the lab's directory is under /run/twill,
    /// which the node's mount namespace covers with its own).
    fn start_kubelet(&self, holder: u32, ca_dir: &Path) -> anyhow::Result<()> {
        let name = &self.node.name;
        let dir = self.disk.join("kubelet");
        std::fs::create_dir_all(&dir)?;
        crate::kube::client_certificate(
            ca_dir,
            &format!("node-{name}"),
            &format!("system:node:{name}"),
            &["system:nodes"],
        )?;
        crate::kube::serving_certificate(ca_dir, &format!("serving-{name}"), &self.node.address)?;
        let pki = self.disk.join("pki");
        std::fs::create_dir_all(&pki)?;
        for stem in [
            format!("node-{name}"),
            format!("serving-{name}"),
            "kube-proxy".to_string(),
        ] {
            for extension in ["crt", "key"] {
                let file = format!("{stem}.{extension}");
                std::fs::copy(ca_dir.join(&file), pki.join(&file))?;
            }
        }
        std::fs::copy(ca_dir.join("ca.crt"), pki.join("ca.crt"))?;
        let pki = pki.as_path();
        let server = format!("https://{UNDERLAY_GATEWAY}:{API_PORT}");
        let kubeconfig = dir.join("kubelet.kubeconfig");
        crate::kube::write_kubeconfig(&kubeconfig, &server, pki, &format!("node-{name}"))?;
        let file = |n: &str| pki.join(n).display().to_string();
        let config = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.node.address,
            "healthzBindAddress": "127.0.0.1",
            "readOnlyPort": 0,
            "authentication": {"anonymous": {"enabled": false}, "webhook": {"enabled": true},
                               "x509": {"clientCAFile": file("ca.crt")}},
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": file(&format!("serving-{name}.crt")),
            "tlsPrivateKeyFile": file(&format!("serving-{name}.key")),
            "containerRuntimeEndpoint": format!("unix://{}", self.socket().display()),
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": format!("/{}", self.cgroup()),
            "failCgroupV1": false,
            "podLogsDir": self.disk.join("log-pods").display().to_string(),
            "clusterDomain": "cluster.local",
            "clusterDNS": ["10.96.0.10"],
            "resolvConf": "",
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": false,
        });
        std::fs::write(dir.join("config.yaml"), serde_yaml::to_string(&config)?)?;
        self.make_cgroups()?;
        let binaries = crate::kube::binaries();
        let kubelet = |b: &str| binaries.join(b).display().to_string();
        self.spawn_inside(
            holder,
            "kubelet",
            &[
                kubelet("kubelet"),
                "--config".into(),
                dir.join("config.yaml").display().to_string(),
                "--kubeconfig".into(),
                kubeconfig.display().to_string(),
                "--root-dir".into(),
                dir.join("root").display().to_string(),
                "--cert-dir".into(),
                dir.join("pki").display().to_string(),
                "--hostname-override".into(),
                name.clone(),
                "--node-ip".into(),
                self.node.address.clone(),
                "--v=1".into(),
            ],
        )?;
        let proxy = self.disk.join("kube-proxy");
        std::fs::create_dir_all(&proxy)?;
        let proxy_kubeconfig = proxy.join("kube-proxy.kubeconfig");
        crate::kube::write_kubeconfig(&proxy_kubeconfig, &server, pki, "kube-proxy")?;
        let config = json!({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": proxy_kubeconfig.display().to_string()},
            "hostnameOverride": name,
            "mode": "iptables",
            "clusterCIDR": KUBE_POD_POOL,
            "healthzBindAddress": "127.0.0.1:10256",
            "metricsBindAddress": "127.0.0.1:10249",
            // The machine's conntrack table sizes are not the node's to set.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                          "tcpCloseWaitTimeout": "0s"},
        });
        std::fs::write(proxy.join("config.yaml"), serde_yaml::to_string(&config)?)?;
        self.spawn_inside(
            holder,
            "kube-proxy",
            &[
                kubelet("kube-proxy"),
                "--config".into(),
                proxy.join("config.yaml").display().to_string(),
                "--v=1".into(),
            ],
        )
    }
}

/// A process of the pod `uid` on `node` (the pause process or a container's: all share the
/// pod's network namespace), found in the node's cgroups (`.../pod<UID>/...`, the kubelet's
/// cgroupfs layout).
fn pod_process(lab: &str, node: &str, uid: &str) -> Option<i32> {
    fn find(dir: &Path, wanted: &str, inside: bool) -> Option<i32> {
        let inside = inside || dir.file_name().is_some_and(|n| n == wanted);
        if inside {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            if let Some(pid) = procs.lines().find_map(|l| l.trim().parse().ok()) {
                return Some(pid);
            }
        }
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                if let Some(pid) = find(&entry.path(), wanted, inside) {
                    return Some(pid);
                }
            }
        }
        None
    }
    let wanted = format!("pod{uid}");
    cgroup_hierarchies()
        .into_iter()
        .find_map(|h| find(&h.join(format!("twl-{lab}.{node}")), &wanted, false))
}

/// Every cgroup hierarchy's mount point (v1 controllers, named, unified).
fn cgroup_hierarchies() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() > 2 && (fields[2] == "cgroup" || fields[2] == "cgroup2"))
                .then(|| PathBuf::from(fields[1]))
        })
        .collect()
}

/// Whether this process may lower its OOM score (no CAP_SYS_RESOURCE in some sandboxes:
/// then containerd must not pass the kubelet's negative scores to runc).
fn can_lower_oom_score() -> bool {
    let path = "/proc/self/oom_score_adj";
    let Ok(current) = std::fs::read_to_string(path) else {
        return false;
    };
    let lowered = std::fs::write(path, "-1").is_ok();
    let _ = std::fs::write(path, current.trim());
    lowered
}

impl Lab {
    /// The node's disk directory.
    pub(super) fn node_disk(&self, node: &str) -> PathBuf {
        Path::new(DISK_ROOT).join(&self.name).join(node)
    }

    fn kube_node<'a>(&'a self, node: &'a NodeState) -> KubeNode<'a> {
        KubeNode {
            lab: self,
            node,
            disk: self.node_disk(&node.name),
        }
    }

    /// Builds the Kubernetes lab's nodes once the underlay, the nodes' namespaces and the
    /// control plane's processes exist.
    pub(super) async fn build_kubelets(
        &self,
        state: &mut State,
        control: &crate::kube::LabControlPlane,
        options: &UpOptions,
    ) -> anyhow::Result<()> {
        let images_dir = Path::new(DISK_ROOT).join(&self.name).join("images");
        let tools = self.tools.clone();
        let images = tokio::task::spawn_blocking({
            let dir = images_dir.clone();
            move || build_images(&tools, &dir, false)
        })
        .await??;
        let restrict_oom = !can_lower_oom_score();
        let pki = self.kube_dir();
        let mut holders = Vec::new();
        for node in &state.nodes {
            let kube_node = self.kube_node(node);
            holders.push(kube_node.start_runtime(restrict_oom)?);
        }
        let imports: Vec<_> = state
            .nodes
            .iter()
            .map(|node| {
                let (lab, node, images) = (self.clone(), node.clone(), images.clone());
                tokio::task::spawn_blocking(move || lab.kube_node(&node).import_images(&images))
            })
            .collect();
        // Without Twill the cluster has nothing of Twill's: the user's apply brings it all.
        if options.without_twill {
            control.serving().await?;
        } else {
            control.ready().await?;
        }
        control.start_controllers()?;
        for import in imports {
            import.await??;
        }
        for (node, holder) in state.nodes.iter().zip(&holders) {
            self.kube_node(node).start_kubelet(*holder, &pki)?;
        }
        let client = crate::kube::client(&control.kubeconfig).await?;
        // As a user edits the ConfigMap before applying: the pool's encapsulation.
        let vxlan = match options.encap.as_deref() {
            Some("vxlan") => "Always",
            Some("vxlan-cross-subnet") => "CrossSubnet",
            _ => "Never",
        };
        let manifest = MANIFEST.replace(
            "ipv4_pool_vxlan_mode: \"Never\"",
            &format!("ipv4_pool_vxlan_mode: \"{vxlan}\""),
        );
        if options.without_twill {
            return self.wait_nodes_registered(&client, state).await;
        }
        crate::kube::apply_documents(&client, &manifest).await?;
        self.wait_nodes_ready(&client, state).await?;
        if images.iter().any(|i| i.reference == COREDNS_IMAGE) {
            crate::kube::apply_documents(&client, DNS_MANIFEST).await?;
            self.wait_dns(&client).await?;
        } else {
            tracing::warn!("no CoreDNS binary (make k8s builds it): the lab has no cluster DNS");
        }
        Ok(())
    }

    /// Creates Kubernetes Pods (the lab's responder image unless the pod names its own) on
    /// their nodes (spread when none is named), waits until each runs, and names each pod's
    /// network namespace `twl-LAB.p.NS.NAME` so the lab's probes enter it as in other labs.
    pub(super) async fn add_kube_pods(
        &self,
        state: &mut State,
        pods: Vec<(Object<PodSpec>, Option<String>)>,
    ) -> anyhow::Result<()> {
        use k8s_openapi::api::core::v1::Pod;
        let kubeconfig = state.kubeconfig.clone().context("the lab's kubeconfig")?;
        let client = crate::kube::client(Path::new(&kubeconfig)).await?;
        let mut created = Vec::new();
        for (pod, node) in pods {
            let namespace = pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let name = pod.metadata.name.clone().unwrap_or_default();
            let node = match node.or_else(|| pod.spec.node_name.clone()) {
                Some(node) => node,
                None => state.nodes[(state.created as usize) % state.nodes.len()]
                    .name
                    .clone(),
            };
            state.created += 1;
            let (serves, _) = workload_of(&pod, &state.ports);
            let mut args = vec!["--answer".to_string(), format!("{namespace}/{name}")];
            for port in &serves {
                args.push("--port".into());
                args.push(port.label());
            }
            let mut value = serde_json::to_value(&pod)?;
            value["apiVersion"] = json!("v1");
            value["kind"] = json!("Pod");
            value["metadata"]["namespace"] = json!(namespace);
            value["spec"]["nodeName"] = json!(node);
            value["spec"]["terminationGracePeriodSeconds"] = json!(1);
            let container = &mut value["spec"]["containers"][0];
            // The topology's pods run the responder; a pod naming its own image runs it, and
            // the lab looks at what it listens on (`ss` in its namespace) instead.
            let own_image =
                if container["image"] == "twill/responder" || container["image"].is_null() {
                    container["image"] = json!(RESPONDER_IMAGE);
                    container["args"] = json!(args);
                    None
                } else {
                    container["image"].as_str().map(str::to_string)
                };
            container["imagePullPolicy"] = json!("IfNotPresent");
            // Each pod's name resolves through the cluster DNS, as the lab's pods' names do in
            // the other labs: a headless Service of the same name (its A record is the pod's
            // own address, so policy sees pod-to-pod traffic).
            value["metadata"]["labels"]["twill.lab/pod"] = json!(name);
            let service = json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"clusterIP": "None", "selector": {"twill.lab/pod": name}}});
            let text = format!(
                "{}---\n{}",
                serde_yaml::to_string(&service)?,
                serde_yaml::to_string(&value)?
            );
            crate::kube::apply_documents(&client, &text).await?;
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            let (serves, command) = match own_image {
                Some(image) => (Vec::new(), Some(vec![image])),
                None => (serves, None),
            };
            created.push((namespace, name, node, serves, labels, command));
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        for (namespace, name, node, serves, labels, command) in created {
            let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &namespace);
            let (ips, uid) = loop {
                let pod = api.get(&name).await?;
                let status = pod.status.clone().unwrap_or_default();
                let ips: Vec<String> = status
                    .pod_ips
                    .iter()
                    .flatten()
                    .map(|ip| ip.ip.clone())
                    .collect();
                if status.phase.as_deref() == Some("Running") && !ips.is_empty() {
                    break (ips, pod.metadata.uid.unwrap_or_default());
                }
                if Instant::now() > deadline {
                    bail!(
                        "pod {namespace}/{name} is not Running after 120 s: {:?} (kubectl describe pod -n {namespace} {name})",
                        status.container_statuses.unwrap_or_default().iter().map(|c| c.state.clone()).collect::<Vec<_>>()
                    );
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            let netns = format!("{}p.{namespace}.{name}", self.prefix());
            let pid = pod_process(&self.name, &node, &uid).with_context(|| {
                format!("no process of pod {namespace}/{name} in its node's cgroups")
            })?;
            let output = Command::new("ip")
                .args(["netns", "attach", &netns, &pid.to_string()])
                .output()?;
            if !output.status.success() {
                bail!(
                    "ip netns attach {netns} {pid}: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
            }
            state.pods.push(PodState {
                namespace: namespace.clone(),
                name: name.clone(),
                node,
                netns,
                container_id: uid,
                ips,
                labels,
                serves,
                command,
            });
            state::save(state)?;
        }
        Ok(())
    }

    /// The cluster DNS answers (its pod is Ready: CoreDNS's /ready, after its first sync).
    async fn wait_dns(&self, client: &kube::Client) -> anyhow::Result<()> {
        use k8s_openapi::api::apps::v1::Deployment;
        let api: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), "kube-system");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ready = api
                .get("coredns")
                .await?
                .status
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            if ready > 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("CoreDNS is not ready after 120 s (kubectl -n kube-system describe pods)");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Every node's kubelet has registered its Node (Ready or not).
    async fn wait_nodes_registered(
        &self,
        client: &kube::Client,
        state: &State,
    ) -> anyhow::Result<()> {
        use k8s_openapi::api::core::v1::Node;
        let nodes: kube::Api<Node> = kube::Api::all(client.clone());
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let names: Vec<String> = nodes
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .filter_map(|n| n.metadata.name)
                .collect();
            if state.nodes.iter().all(|n| names.contains(&n.name)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the kubelets did not register within 120 s (logs: {})",
                    self.dir().join("logs").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Every node is Ready (the kubelet says so once the runtime has a network: after
    /// install-cni) and twill-node is ready on it.
    async fn wait_nodes_ready(&self, client: &kube::Client, state: &State) -> anyhow::Result<()> {
        use k8s_openapi::api::core::v1::{Node, Pod};
        let nodes: kube::Api<Node> = kube::Api::all(client.clone());
        let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), "twill-system");
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let ready_nodes: Vec<String> = nodes
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .filter(|n| {
                    condition_true(
                        n.status.as_ref().and_then(|s| s.conditions.as_ref()),
                        "Ready",
                    )
                })
                .filter_map(|n| n.metadata.name)
                .collect();
            let ready_agents: Vec<String> = pods
                .list(&kube::api::ListParams::default().labels("k8s-app=twill-node"))
                .await?
                .items
                .into_iter()
                .filter(|p| {
                    condition_true(
                        p.status.as_ref().and_then(|s| s.conditions.as_ref()),
                        "Ready",
                    )
                })
                .filter_map(|p| p.spec.and_then(|s| s.node_name))
                .collect();
            let missing: Vec<&str> = state
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .filter(|n| {
                    !ready_nodes.iter().any(|r| r == n) || !ready_agents.iter().any(|r| r == n)
                })
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "not Ready (node or twill-node) after 240 s: {missing:?} (logs: {})",
                    self.dir().join("logs").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Removes the Kubernetes lab's nodes: every process in their cgroups (pods included),
    /// the cgroups, the disks, and the mount points made for them.
    pub(super) fn remove_kubelets(&self) {
        for hierarchy in cgroup_hierarchies() {
            let Ok(entries) = std::fs::read_dir(&hierarchy) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("twl-{}.", self.name)) {
                    kill_cgroup(&entry.path());
                }
            }
        }
        let disk = Path::new(DISK_ROOT).join(&self.name);
        if disk.exists() {
            let _ = std::fs::remove_dir_all(&disk);
        }
        // The root itself and the mount points made for the nodes, once no other Kubernetes
        // lab uses them (another lab's nodes have them as mount points).
        let _ = std::fs::remove_dir(DISK_ROOT);
        if Path::new(DISK_ROOT).exists() {
            return;
        }
        if let Ok(text) = std::fs::read_to_string(CREATED_DIRS) {
            for dir in text.lines().rev() {
                let _ = std::fs::remove_dir(dir);
            }
            let _ = std::fs::remove_file(CREATED_DIRS);
        }
    }
}

/// Kills every process of a cgroup subtree, then removes it (deepest first).
fn kill_cgroup(dir: &Path) {
    for _ in 0..50 {
        let mut pids = Vec::new();
        collect_pids(dir, &mut pids);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    remove_cgroup(dir);
}

fn collect_pids(dir: &Path, pids: &mut Vec<i32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&entry.path(), pids);
            }
        }
    }
}

fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn condition_true(conditions: Option<&Vec<impl ConditionLike>>, kind: &str) -> bool {
    conditions
        .into_iter()
        .flatten()
        .any(|c| c.kind() == kind && c.status() == "True")
}

/// A Node's or a Pod's condition.
trait ConditionLike {
    fn kind(&self) -> &str;
    fn status(&self) -> &str;
}

impl ConditionLike for k8s_openapi::api::core::v1::NodeCondition {
    fn kind(&self) -> &str {
        &self.type_
    }
    fn status(&self) -> &str {
        &self.status
    }
}

impl ConditionLike for k8s_openapi::api::core::v1::PodCondition {
    fn kind(&self) -> &str {
        &self.type_
    }
    fn status(&self) -> &str {
        &self.status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_split_as_mount_does() {
        use nix::mount::MsFlags;
        let (flags, data) = split_options("rw,nosuid,nodev,noexec,relatime,cpu,cpuacct");
        assert_eq!(
            flags,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME
        );
        assert_eq!(data, "cpu,cpuacct");
        let (flags, data) = split_options("ro,relatime,mode=755");
        assert!(flags.contains(MsFlags::MS_RDONLY));
        assert_eq!(data, "mode=755");
    }
}
