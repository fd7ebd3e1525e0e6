#!/usr/bin/env bash
# Builds the real Kubernetes control plane the Kubernetes tests run against:
# kube-apiserver from the k8s.io/kubernetes Go module and etcd from
# go.etcd.io/etcd/server/v3, both from the Go module proxy. Binaries are cached
# under $HOME/.cache/infergate/kube/<versions>/ (the key names both versions and
# the Go version that built them), so a fresh clone only builds them once per
# machine. Prints nothing but errors on success, and fails loudly otherwise:
# Kubernetes tests never skip silently.
#
#   scripts/kube-tools.sh          # build (or find) the binaries
#   scripts/kube-tools.sh --node   # also the node's: kubelet, kube-controller-manager,
#                                  # kube-scheduler, kube-proxy, kubectl (scripts/cluster.sh),
#                                  # crane (to check images) and helm (the chart's tests)
#   scripts/kube-tools.sh --print  # print the directory that holds them
set -euo pipefail

KUBERNETES_VERSION=v1.34.4
ETCD_VERSION=v3.6.16

# The k8s.io/* staging modules of a Kubernetes release carry version
# v0.<minor>.<patch> of that release.
STAGING_VERSION="v0.${KUBERNETES_VERSION#v1.}"
# Go is installed here, and not always on PATH in non-login shells.
export PATH="$PATH:/usr/local/go/bin"
GO_VERSION="$(go env GOVERSION 2>/dev/null || echo no-go)"
KEY="kubernetes-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-$GO_VERSION"
OUT="$HOME/.cache/infergate/kube/$KEY"

if [ "${1:-}" = "--print" ]; then
  echo "$OUT"
  exit 0
fi
NODE=false
[ "${1:-}" = "--node" ] && NODE=true
NODE_BINARIES="kubelet kube-controller-manager kube-scheduler kube-proxy kubectl"
# crane checks the images (cargo xtask images) as a registry client reads them.
CRANE_VERSION=v0.22.1
# helm lints, renders and installs charts/infergate.
HELM_VERSION=v4.3.1

have_all() {
  for b in kube-apiserver etcd; do [ -x "$OUT/$b" ] || return 1; done
  if $NODE; then
    for b in $NODE_BINARIES crane helm; do [ -x "$OUT/$b" ] || return 1; done
  fi
  return 0
}
if have_all; then
  exit 0
fi

command -v go >/dev/null || { echo "kube-tools: Go is needed to build the Kubernetes binaries and etcd" >&2; exit 1; }
mkdir -p "$OUT"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod

# A module that requires k8s.io/kubernetes with its staging modules replaced
# by the published versions (k8s.io/kubernetes refers to them as v0.0.0 with
# replace directives to ./staging), in the current directory.
kubernetes_module() {
  go mod init infergate.dev/kube-tools >/dev/null 2>&1
  modfile="$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
  [ -f "$modfile" ] || { echo "kube-tools: cannot download k8s.io/kubernetes@$KUBERNETES_VERSION" >&2; exit 1; }
  staging="$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9.-]*\) => ./staging/.*#\1#p' "$modfile")"
  [ -n "$staging" ] || { echo "kube-tools: no staging modules found in $modfile" >&2; exit 1; }
  for m in $staging; do
    go mod edit -replace "$m=$m@$STAGING_VERSION"
  done
  go mod edit -require "k8s.io/kubernetes@$KUBERNETES_VERSION"
}

# Stamp the release version, as Kubernetes' own build does: the components
# derive their emulated version and /version from it.
kubernetes_ldflags() {
  minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags="$ldflags -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$ldflags"
}

if [ ! -x "$OUT/kube-apiserver" ]; then
  echo "kube-tools: building kube-apiserver $KUBERNETES_VERSION (several minutes, once per machine)" >&2
  mkdir "$work/apiserver"
  (
    cd "$work/apiserver"
    kubernetes_module
    go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBERNETES_VERSION" >/dev/null 2>&1 ||
      go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBERNETES_VERSION"
    go build -trimpath -ldflags "$(kubernetes_ldflags)" -o "$OUT/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
    mv "$OUT/kube-apiserver.tmp" "$OUT/kube-apiserver"
  )
fi

missing_node_binary() {
  for b in $NODE_BINARIES; do [ -x "$OUT/$b" ] || return 0; done
  return 1
}
if $NODE && missing_node_binary; then
  echo "kube-tools: building $NODE_BINARIES $KUBERNETES_VERSION (5-13 minutes, once per machine)" >&2
  mkdir "$work/node"
  (
    cd "$work/node"
    kubernetes_module
    packages=""
    for b in $NODE_BINARIES; do
      go get "k8s.io/kubernetes/cmd/$b@$KUBERNETES_VERSION" >/dev/null 2>&1 ||
        go get "k8s.io/kubernetes/cmd/$b@$KUBERNETES_VERSION"
      packages="$packages k8s.io/kubernetes/cmd/$b"
    done
    # One build of every package: they share their compiled dependencies.
    mkdir bin
    # shellcheck disable=SC2086
    go build -trimpath -ldflags "$(kubernetes_ldflags)" -o bin/ $packages
    for b in $NODE_BINARIES; do
      mv "bin/$b" "$OUT/$b"
    done
  )
fi

if $NODE && [ ! -x "$OUT/crane" ]; then
  echo "kube-tools: building crane $CRANE_VERSION" >&2
  mkdir "$work/crane"
  (
    cd "$work/crane"
    go mod init infergate.dev/crane-tools >/dev/null 2>&1
    go get "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION" >/dev/null 2>&1 ||
      go get "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION"
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$OUT/crane.tmp" github.com/google/go-containerregistry/cmd/crane
    mv "$OUT/crane.tmp" "$OUT/crane"
  )
fi

if $NODE && [ ! -x "$OUT/helm" ]; then
  echo "kube-tools: building helm $HELM_VERSION (a few minutes, once per machine)" >&2
  mkdir "$work/helm"
  (
    cd "$work/helm"
    go mod init infergate.dev/helm-tools >/dev/null 2>&1
    go get "helm.sh/helm/v4/cmd/helm@$HELM_VERSION" >/dev/null 2>&1 ||
      go get "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
    CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" \
      -o "$OUT/helm.tmp" helm.sh/helm/v4/cmd/helm
    mv "$OUT/helm.tmp" "$OUT/helm"
  )
fi

if [ ! -x "$OUT/etcd" ]; then
  echo "kube-tools: building etcd $ETCD_VERSION" >&2
  mkdir "$work/etcd"
  (
    cd "$work/etcd"
    go mod init infergate.dev/etcd-tools >/dev/null 2>&1
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 ||
      go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    go build -trimpath -ldflags "-s -w" -o "$OUT/etcd.tmp" go.etcd.io/etcd/server/v3
    mv "$OUT/etcd.tmp" "$OUT/etcd"
  )
fi

"$OUT/kube-apiserver" --version >/dev/null || { echo "kube-tools: the built kube-apiserver does not run" >&2; exit 1; }
"$OUT/etcd" --version >/dev/null || { echo "kube-tools: the built etcd does not run" >&2; exit 1; }
if $NODE; then
  "$OUT/kubelet" --version >/dev/null || { echo "kube-tools: the built kubelet does not run" >&2; exit 1; }
  "$OUT/crane" version >/dev/null || { echo "kube-tools: the built crane does not run" >&2; exit 1; }
  "$OUT/helm" version >/dev/null || { echo "kube-tools: the built helm does not run" >&2; exit 1; }
fi
