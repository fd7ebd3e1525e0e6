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

if [ -x "$OUT/kube-apiserver" ] && [ -x "$OUT/etcd" ]; then
  exit 0
fi

command -v go >/dev/null || { echo "kube-tools: Go is needed to build kube-apiserver and etcd" >&2; exit 1; }
mkdir -p "$OUT"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod

if [ ! -x "$OUT/kube-apiserver" ]; then
  echo "kube-tools: building kube-apiserver $KUBERNETES_VERSION (several minutes, once per machine)" >&2
  mkdir "$work/apiserver"
  (
    cd "$work/apiserver"
    go mod init infergate.dev/kube-tools >/dev/null 2>&1
    # k8s.io/kubernetes refers to its staging modules as v0.0.0 with replace
    # directives to ./staging; a consumer must replace them with the published
    # versions.
    modfile="$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
    [ -f "$modfile" ] || { echo "kube-tools: cannot download k8s.io/kubernetes@$KUBERNETES_VERSION" >&2; exit 1; }
    staging="$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9.-]*\) => ./staging/.*#\1#p' "$modfile")"
    [ -n "$staging" ] || { echo "kube-tools: no staging modules found in $modfile" >&2; exit 1; }
    for m in $staging; do
      go mod edit -replace "$m=$m@$STAGING_VERSION"
    done
    go mod edit -require "k8s.io/kubernetes@$KUBERNETES_VERSION"
    go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBERNETES_VERSION" >/dev/null 2>&1 ||
      go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBERNETES_VERSION"
    # Stamp the release version, as Kubernetes' own build does: the apiserver
    # derives its emulated version and /version from it.
    minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
    ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags="$ldflags -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
      ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    go build -trimpath -ldflags "$ldflags" -o "$OUT/kube-apiserver.tmp" k8s.io/kubernetes/cmd/kube-apiserver
    mv "$OUT/kube-apiserver.tmp" "$OUT/kube-apiserver"
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
