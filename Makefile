# Twill. Two commands do everything on a fresh Debian machine, as root:
#   make demo   the seed walkthrough on the embedded datastore
#   make test   install what the tests need, build, run every test
# Recipes stay thin; automation lives in Rust (xtask).

SHELL := /bin/bash
CARGO ?= cargo
# Package scripts are kept from starting services (policy-rc.d): the peers run only inside
# the namespaces tests make.
# Debian packages the build and the tests need: protoc for etcd-client's build, etcd and the
# BGP peers (gobgpd, bird2, frr) as real peers, and the kernel tools.
# The Kubernetes lab adds containerd and runc (each node's runtime), nftables (its userland goes
# into the twill/node image), binutils (strip, for the images) and nginx (the seed articles' nginx:alpine
# stand-in image; python3 gives python:3.9-slim's).
DEB_PACKAGES := protobuf-compiler etcd-server etcd-client gobgpd bird2 frr iproute2 iptables ipset curl containernetworking-plugins python3 conntrack tcpdump openssl containerd runc nftables binutils nginx
# Cargo says where it builds (CARGO_TARGET_DIR, build.target-dir or ./target); asked only when
# a recipe uses it, so that `make deps` works before cargo is installed.
# kubectl as `make k8s` builds it.
KUBECTL ?= $${TWILL_K8S_BIN:-/var/tmp/twill-k8s/bin}/kubectl
TWILLCTL = $(shell $(CARGO) metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug/twillctl

.PHONY: all deps build test check lint demo bench fuzz clean k8s images

all: build

deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "run as root to install:$$missing" >&2; exit 1; fi; \
		guard=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && guard=1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		status=$$?; [ -n "$$guard" ] && rm -f /usr/sbin/policy-rc.d; [ $$status = 0 ] || exit $$status; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo is needed (a Rust toolchain)" >&2; exit 1; }

build: deps
	$(CARGO) build --workspace --all-targets

# Cores build without the runtime edges (no tokio, SQLite or etcd).
check: deps
	$(CARGO) check -p twill-shared -p twill-bgpd -p twill-felix -p twill-ipam -p twill-ipip --no-default-features --lib
	$(CARGO) check --manifest-path fuzz/Cargo.toml --bins

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Real Kubernetes binaries (the control plane, kubelet, kube-proxy, kubectl) built from the Go
# module proxy into /var/tmp/twill-k8s (cached: a second run takes seconds) for the Kubernetes
# datastore tests and the Kubernetes lab.
k8s: deps
	@command -v go >/dev/null || { echo "go is needed to build Kubernetes for the tests" >&2; exit 1; }
	$(CARGO) run -q -p xtask -- k8s-build

# Twill's images as OCI archives in target/images (`ctr -n k8s.io images import`, `docker
# load`): twill/node and twill/kube-controllers from release binaries and Debian's packages,
# reproducible (the same inputs give the same digests), no registry or container engine.
images: deps
	$(CARGO) build --release -p twill-node -p twill-cni -p twillctl -p twill-lab
	$(CARGO) run -q -p xtask -- images release

# Ends with one line that totals every test binary ("summary: N passed, N failed"). The output
# streams through awk, which totals as it goes: no log file, so nothing assumes where the
# target directory is; the exit status is cargo's (pipefail).
test: build check k8s
	@set -o pipefail; $(CARGO) test --workspace 2>&1 | \
	awk '{ print; fflush() } /^test result:/ { p += $$4; f += $$6 } END { printf "summary: %d passed, %d failed\n", p, f }'

# The lab (network namespaces on this machine, pods wired by the real twill CNI plugin, a
# twill-node per node enforcing policy and routing by BGP, a BIRD top-of-rack router): the
# first seed article's pods and policies across three nodes, matrix after matrix; then the
# second article's three-tier example; then its other policies, stored and listed; then the first article
# again on the Kubernetes datastore, its policies applied with kubectl. The lab is always taken
# down at the end, also when a step fails.
demo: deps k8s
	$(CARGO) build -q -p twillctl -p twill-cni -p twill-node
	@set -e; lab() { echo; echo "\$$ twillctl lab $$*"; $(TWILLCTL) lab --name demo "$$@"; }; \
	trap '$(TWILLCTL) lab --name demo down >/dev/null 2>&1 || true' EXIT; \
	$(TWILLCTL) lab --name demo down >/dev/null; \
	echo "# A three-node lab with a BIRD top-of-rack router: namespaces on this machine, closed off from its own network."; \
	echo "# Each node runs twill-node (policy, BGP mesh, eBGP to the rack); pods are wired by the twill CNI plugin."; \
	lab up --nodes 3 --tor bird; \
	datastore=$$($(TWILLCTL) lab --name demo status -o json | sed -n 's/.*"datastore": "\(.*\)".*/\1/p'); \
	step() { echo; echo "\$$ twillctl $$*"; $(TWILLCTL) --datastore "$$datastore" "$$@"; }; \
	curl_backend() { lab exec default/frontend -- curl -s -o /dev/null -w '%{http_code}\n' --max-time 2 http://backend:8000 || echo "(no answer within 2 s: the connection is dropped)"; }; \
	echo; echo "# The first article's pods, created through the twill CNI plugin:"; \
	lab apply -f examples/seed-walkthrough/01-pods.yaml; \
	lab sync; \
	lab status; \
	echo; echo "# The rack learned every node's pod block (and routes to them):"; \
	echo "\$$ twillctl lab tor routes"; $(TWILLCTL) lab --name demo tor routes | grep -E '^[0-9]|via|BGP.as_path'; \
	echo; echo "# The frontend reaches the backend's python http.server by name:"; \
	curl_backend; \
	lab probe --port 80/TCP --port 8000/TCP; \
	echo; echo "# Deny all ingress to the backend:"; \
	lab apply -f examples/seed-walkthrough/02-deny-all-ingress-to-backend.yaml; \
	curl_backend; \
	lab probe --port 80/TCP --port 8000/TCP; \
	echo; echo "# Allow the frontend to reach the backend on TCP 8000 (and nothing else):"; \
	lab apply -f examples/seed-walkthrough/03-allow-frontend-to-backend.yaml; \
	curl_backend; \
	lab probe --port 80/TCP --port 8000/TCP; \
	step policy explain --from default/frontend --to default/backend --port 8000/tcp; \
	step node status --status-file /run/twill/lab/demo/node-1/status.json; \
	lab down; \
	echo; echo "# The second article's three-tier application (examples/three-tier):"; \
	lab up --topology examples/three-tier/topology.yaml; \
	datastore=$$($(TWILLCTL) lab --name demo status -o json | sed -n 's/.*"datastore": "\(.*\)".*/\1/p'); \
	ports="--port 80/TCP --port 8080/TCP --port 5432/TCP --port 53/UDP"; \
	lab probe $$ports; \
	lab apply -f examples/calico-policies/frontend-policy.yaml; \
	lab probe $$ports; \
	step policy explain --from frontend/web --to database/postgres --port 5432/tcp; \
	echo; echo "# The second article's other policies, stored and listed (fields Twill does not enforce are named):"; \
	for f in examples/calico-policies/*.yaml; do step apply -f $$f; done; \
	step get globalnetworkpolicies -o wide; \
	step get networkpolicies -A -o wide; \
	echo; echo "# audit-all-traffic logs every packet it sees (Log, then Allow): tcpdump reads the node's NFLOG group 1 (ingress logs) while a probe runs:"; \
	( ip netns exec twl-demo.node-1 timeout 5 tcpdump -l -n -i nflog:1 -c 4 2>/dev/null & ); sleep 1; \
	$(TWILLCTL) lab --name demo probe --port 80/TCP >/dev/null; sleep 1; \
	echo; echo "# A bad document is refused, naming the document, the field and the reason:"; \
	printf 'apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: bad\nspec:\n  selector: app = '"'"'x'"'"'\n' \
		| $(TWILLCTL) --datastore "$$datastore" apply -f - || true; \
	echo; echo "# Addresses, as calicoctl ipam show prints them:"; \
	step ipam show --show-blocks; \
	step ipam check; \
	lab down; \
	echo; echo "# The articles' commands are kubectl: the lab on the Kubernetes datastore runs its own kube-apiserver (inside the lab's namespaces)."; \
	echo "# Pods are still made by the lab (it is the kubelet here); policies go in with kubectl, as the articles do it."; \
	lab up --datastore kubernetes --nodes 2; \
	kubeconfig=$$($(TWILLCTL) lab --name demo status -o json | sed -n 's/.*"kubeconfig": "\(.*\)".*/\1/p'); \
	kubectl() { echo; echo "\$$ kubectl $$*"; $(KUBECTL) --kubeconfig "$$kubeconfig" "$$@"; }; \
	lab apply -f examples/seed-walkthrough/01-pods.yaml; \
	kubectl get pods -o custom-columns='NAME:.metadata.name,NODE:.spec.nodeName,IP:.metadata.annotations.cni\.projectcalico\.org/podIP'; \
	curl_backend; \
	kubectl apply -f examples/seed-walkthrough/02-deny-all-ingress-to-backend.yaml; \
	lab sync; \
	curl_backend; \
	kubectl apply -f examples/seed-walkthrough/03-allow-frontend-to-backend.yaml; \
	lab sync; \
	curl_backend; \
	kubectl get networkpolicies; \
	echo; echo "\$$ twillctl get workloadendpoints -A   (derived from the Pods, as Calico does)"; \
	$(TWILLCTL) --datastore "kubernetes:$$kubeconfig" get workloadendpoints -A; \
	lab down; \
	left=$$(ls /run/netns 2>/dev/null | grep -c '^twl-demo\.' || true); \
	echo "namespaces left behind: $$left"; [ "$$left" = 0 ]

# Needs root: the BGP benchmark builds network namespaces.
bench: deps
	$(CARGO) build --release --workspace --bins
	$(CARGO) run --release -p xtask -- bench docs/benchmarks.md

# Runs each fuzz target for FUZZ_SECONDS (needs cargo-fuzz; RUSTC_BOOTSTRAP for its flags).
FUZZ_SECONDS ?= 60
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $$(ls fuzz_targets | sed 's/\.rs$$//'); do \
		mkdir -p corpus/$$t; if [ -d corpus-seed/$$t ]; then cp -n corpus-seed/$$t/* corpus/$$t/; fi; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=4096 || exit 1; \
	done

clean:
	$(CARGO) clean
