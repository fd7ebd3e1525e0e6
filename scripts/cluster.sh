#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine, for tests and
# development: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# containerd, a kubelet and kube-proxy, with real containers.
#
#   scripts/cluster.sh prepare             # the host's one-time set-up only (packages, /run/netns)
#   scripts/cluster.sh up                  # start (builds what it needs, once)
#   scripts/cluster.sh status              # what runs, and the node
#   scripts/cluster.sh load-image FILE...  # import OCI image archives into the node
#   scripts/cluster.sh kubeconfig          # print the admin kubeconfig's path
#   scripts/cluster.sh kubectl ARGS...     # kubectl against the cluster
#   scripts/cluster.sh down                # stop everything, undo every host change
#   scripts/cluster.sh purge               # down, and delete the cluster's state (a fresh one next up)
#
# The node is a network namespace of its own (`infergate-<index>`): every
# process of the cluster runs in it, so its iptables rules (kubelet,
# kube-proxy), its bridge and its ip_forward setting never touch the host's,
# and two clusters (a developer's and a test's) can run side by side. The
# host reaches it through a veth pair and two routes:
#
#   host  198.19.<200+i>.1 <--veth--> 198.19.<200+i>.2  node: API server :6443
#   Pods      198.18.<i>.0/24 on the node's bridge (gateway .1)
#   Services  198.19.<i>.0/24, by kube-proxy in the node
#
# Addresses come from 198.18.0.0/15 (the benchmarking range), never from
# private ranges. The host reaches Pod IPs and ClusterIPs through the routes.
#
# Parameters (environment):
#   INFERGATE_CLUSTER_INDEX  1..99, default 1: picks the addresses and names
#   INFERGATE_CLUSTER_DIR    state directory, default /var/tmp/infergate-cluster-<index>
#
# Host changes, all undone by `down` (also after a crash: it finds them by
# name): the namespace, the veth pair, two routes, cgroups under
# /infergate-<index>, mounts under the state directory. Debian packages
# (containerd, runc, CNI plugins, iptables) are installed once and stay.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
INDEX="${INFERGATE_CLUSTER_INDEX:-1}"
case "$INDEX" in
  [1-9] | [1-9][0-9]) ;;
  *) echo "cluster: INFERGATE_CLUSTER_INDEX must be 1..99, not $INDEX" >&2; exit 2 ;;
esac
NAME="infergate-$INDEX"
DIR="${INFERGATE_CLUSTER_DIR:-/var/tmp/infergate-cluster-$INDEX}"
NETNS="$NAME"
HOST_VETH="ig$INDEX-host"
NODE_VETH="ig$INDEX-node"
HOST_IP="198.19.$((200 + INDEX)).1"
NODE_IP="198.19.$((200 + INDEX)).2"
POD_CIDR="198.18.$INDEX.0/24"
POD_GATEWAY="198.18.$INDEX.1"
SERVICE_CIDR="198.19.$INDEX.0/24"
BRIDGE="igbr$INDEX"
CGROUP_ROOT="/$NAME"
NODE_NAME="$NAME-node"
API="https://$NODE_IP:6443"

log() { echo "cluster[$INDEX]: $*" >&2; }
die() { log "$*"; exit 1; }
in_node() { nsenter --net="/run/netns/$NETNS" -- "$@"; }

kube_bin() { "$ROOT/scripts/kube-tools.sh" --print; }

# --- set-up: packages, binaries, the pause image ---------------------------

install_packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v nsenter >/dev/null || missing+=(util-linux)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v openssl >/dev/null || missing+=(openssl)
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
}

# --- certificates and kubeconfigs ------------------------------------------

make_pki() {
  local pki="$DIR/pki"
  [ -f "$pki/done" ] && return
  mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=infergate-test-ca" 2>/dev/null
    # Serving certificates: the API server and the kubelet.
    cert() { # name CN SANs [extendedKeyUsage]
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
      printf 'subjectAltName=%s\nextendedKeyUsage=%s\n' "$3" "${4:-serverAuth,clientAuth}" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    }
    local first_service="198.19.$INDEX.1"
    cert apiserver "/CN=kube-apiserver" \
      "IP:$NODE_IP,IP:$first_service,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    cert kubelet "/CN=$NODE_NAME" "IP:$NODE_IP,DNS:$NODE_NAME"
    # Client certificates: the API server to kubelets (logs, exec), the kubelet to the API server.
    cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "DNS:client" clientAuth
    cert kubelet-client "/O=system:nodes/CN=system:node:$NODE_NAME" "DNS:client" clientAuth
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    # Static tokens: admin, the controller manager, the scheduler, kube-proxy.
    for user in admin kube-controller-manager kube-scheduler kube-proxy; do
      echo "$(openssl rand -hex 16),$user,$user" >>tokens.tmp
    done
    awk -F, 'BEGIN{OFS=","} {
      g = ($2 == "admin") ? "system:masters" : "";
      n = ($2 == "admin") ? "admin" : "system:" $2;
      print $1, n, n, g }' tokens.tmp >tokens.csv
    rm tokens.tmp ./*.csr ./*.ext
    touch done
  )
}

token_of() { awk -F, -v u="$1" '$2 == u || $2 == "system:" u { print $1 }' "$DIR/pki/tokens.csv"; }

kubeconfig() { # file user token-or-certificate
  local file="$1" user="$2"
  {
    echo "apiVersion: v1"
    echo "kind: Config"
    echo "clusters:"
    echo "- name: $NAME"
    echo "  cluster:"
    echo "    server: $API"
    echo "    certificate-authority: $DIR/pki/ca.crt"
    echo "users:"
    echo "- name: $user"
    echo "  user:"
    if [ "$user" = kubelet ]; then
      echo "    client-certificate: $DIR/pki/kubelet-client.crt"
      echo "    client-key: $DIR/pki/kubelet-client.key"
    else
      echo "    token: $(token_of "$user")"
    fi
    echo "contexts:"
    echo "- name: $NAME"
    echo "  context: {cluster: $NAME, user: $user}"
    echo "current-context: $NAME"
  } >"$file"
}

# --- the node's network ----------------------------------------------------

network_up() {
  if [ ! -e "/run/netns/$NETNS" ]; then
    ip netns add "$NETNS"
  fi
  if ! ip link show "$HOST_VETH" >/dev/null 2>&1; then
    ip link add "$HOST_VETH" type veth peer name "$NODE_VETH"
    ip link set "$NODE_VETH" netns "$NETNS"
  fi
  ip addr replace "$HOST_IP/30" dev "$HOST_VETH"
  ip link set "$HOST_VETH" up
  in_node ip addr replace "$NODE_IP/30" dev "$NODE_VETH"
  in_node ip link set "$NODE_VETH" up
  in_node ip link set lo up
  in_node ip route replace default via "$HOST_IP"
  # Routing between the host, the bridge and Services happens in the node.
  in_node sysctl -qw net.ipv4.ip_forward=1
  in_node sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || modprobe br_netfilter 2>/dev/null || true
  in_node sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
  ip route replace "$POD_CIDR" via "$NODE_IP" dev "$HOST_VETH"
  ip route replace "$SERVICE_CIDR" via "$NODE_IP" dev "$HOST_VETH"
}

network_down() {
  ip route del "$POD_CIDR" 2>/dev/null || true
  ip route del "$SERVICE_CIDR" 2>/dev/null || true
  ip link del "$HOST_VETH" 2>/dev/null || true
  if [ -e "/run/netns/$NETNS" ]; then
    ip netns del "$NETNS" 2>/dev/null || true
  fi
}

# --- cgroups ---------------------------------------------------------------

cgroup_dirs() { # every hierarchy's directory for our root, existing or not
  local m
  for m in /sys/fs/cgroup/*/; do
    [ -d "$m" ] && echo "${m%/}$CGROUP_ROOT"
  done
  [ -f /sys/fs/cgroup/cgroup.controllers ] && echo "/sys/fs/cgroup$CGROUP_ROOT"
}

cgroups_up() {
  local d
  for d in $(cgroup_dirs); do
    mkdir -p "$d" 2>/dev/null || true
  done
}

cgroups_down() {
  local d
  for d in $(cgroup_dirs); do
    [ -d "$d" ] || continue
    # Deepest first; a cgroup with processes left cannot be removed (logged).
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    [ -d "$d" ] && log "cgroup $d still has processes"
  done
  return 0
}

# --- processes -------------------------------------------------------------

start() { # name command...
  local name="$1"
  shift
  if [ -f "$DIR/run/$name.pid" ] && kill -0 "$(cat "$DIR/run/$name.pid")" 2>/dev/null; then
    return
  fi
  nsenter --net="/run/netns/$NETNS" -- setsid "$@" >"$DIR/log/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/run/$name.pid"
}

stop() { # name...: SIGTERM to all at once, up to 5 s to exit, then SIGKILL
  local name pidfile pids=() pid
  for name in "$@"; do
    pidfile="$DIR/run/$name.pid"
    [ -f "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$pidfile"
  done
  for _ in $(seq 1 50); do
    local alive=0
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null && alive=1
    done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    kill -9 "$pid" 2>/dev/null || true
  done
}

wait_for() { # seconds what command...
  local seconds="$1" what="$2"
  shift 2
  for _ in $(seq 1 $((seconds * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "$what did not come up within ${seconds}s; logs in $DIR/log"
}

kubectl_() { "$(kube_bin)/kubectl" --kubeconfig "$DIR/admin.kubeconfig" "$@"; }

write_configs() {
  local bin
  bin="$(kube_bin)"
  mkdir -p "$DIR"/{run,log,etcd,containerd/root,containerd/state,cni/net.d,cni/data,kubelet,pod-logs}
  kubeconfig "$DIR/admin.kubeconfig" admin
  kubeconfig "$DIR/controller-manager.kubeconfig" kube-controller-manager
  kubeconfig "$DIR/scheduler.kubeconfig" kube-scheduler
  kubeconfig "$DIR/kube-proxy.kubeconfig" kube-proxy
  kubeconfig "$DIR/kubelet.kubeconfig" kubelet
  cat >"$DIR/containerd.toml" <<EOF
version = 2
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
[grpc]
  address = "$DIR/run/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "infergate.local/pause:1"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni/net.d"
EOF
  cat >"$DIR/cni/net.d/10-infergate.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$NAME",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$DIR/cni/data",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
  cat >"$DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$DIR/run/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
failSwapOn: false
address: $NODE_IP
port: 10250
healthzBindAddress: 127.0.0.1
healthzPort: 10248
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $DIR/pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $DIR/pki/kubelet.crt
tlsPrivateKeyFile: $DIR/pki/kubelet.key
makeIPTablesUtilChains: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
resolvConf: ""
podLogsDir: $DIR/pod-logs
registerNode: true
serializeImagePulls: false
EOF
  cat >"$DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $DIR/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0}
EOF
  : "$bin"
}

# --- commands --------------------------------------------------------------

# What the first `up` on a fresh machine does to the host and `down` does not
# undo, done on its own: the Debian packages, and the /run/netns mount that
# iproute2 makes when it adds its first network namespace (and leaves). The
# tests take stock of the host after this, so that `down` is checked against
# a host that had it already.
prepare() {
  [ "$(id -u)" = 0 ] || die "needs root (packages, network namespaces)"
  install_packages
  if ! mountpoint -q /run/netns 2>/dev/null; then
    ip netns add infergate-prepare
    ip netns del infergate-prepare
  fi
}

up() {
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces, cgroups, containers)"
  install_packages
  "$ROOT/scripts/kube-tools.sh" --node
  local bin
  bin="$(kube_bin)"
  # The sandbox image: our own, nothing is pulled.
  local pause
  pause="$(cd "$ROOT" && source scripts/env.sh && cargo xtask images --only pause | awk '{print $1}')"
  [ -f "$pause" ] || die "building the pause image failed"
  mkdir -p "$DIR"
  make_pki
  write_configs
  network_up
  cgroups_up

  start etcd "$bin/etcd" --data-dir "$DIR/etcd" --unsafe-no-fsync \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster default=http://127.0.0.1:2380 --log-level warn
  start containerd containerd --config "$DIR/containerd.toml"
  start kube-apiserver "$bin/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
    --advertise-address "$NODE_IP" --bind-address 0.0.0.0 --secure-port 6443 \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --tls-cert-file "$DIR/pki/apiserver.crt" --tls-private-key-file "$DIR/pki/apiserver.key" \
    --client-ca-file "$DIR/pki/ca.crt" --token-auth-file "$DIR/pki/tokens.csv" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$DIR/pki/sa.pub" --service-account-signing-key-file "$DIR/pki/sa.key" \
    --kubelet-client-certificate "$DIR/pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$DIR/pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$DIR/pki/ca.crt" \
    --kubelet-preferred-address-types InternalIP
  wait_for 60 "kube-apiserver" kubectl_ get --raw /readyz
  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$DIR/controller-manager.kubeconfig" --leader-elect=false \
    --use-service-account-credentials --service-account-private-key-file "$DIR/pki/sa.key" \
    --root-ca-file "$DIR/pki/ca.crt" --cluster-signing-cert-file "$DIR/pki/ca.crt" \
    --cluster-signing-key-file "$DIR/pki/ca.key" --bind-address 127.0.0.1 \
    --controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route'
  start kube-scheduler "$bin/kube-scheduler" --kubeconfig "$DIR/scheduler.kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1
  wait_for 20 "containerd" test -S "$DIR/run/containerd.sock"
  load_image "$pause"
  start kubelet "$bin/kubelet" --config "$DIR/kubelet.yaml" --kubeconfig "$DIR/kubelet.kubeconfig" \
    --root-dir "$DIR/kubelet" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --pod-infra-container-image infergate.local/pause:1
  start kube-proxy "$bin/kube-proxy" --config "$DIR/kube-proxy.yaml" --hostname-override "$NODE_NAME"
  wait_for 90 "the node" node_ready
  wait_for 60 "the default ServiceAccount" kubectl_ get serviceaccount default -n default
  log "up: kubeconfig $DIR/admin.kubeconfig, node $NODE_NAME at $NODE_IP, Pods $POD_CIDR, Services $SERVICE_CIDR"
}

node_ready() {
  [ "$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

load_image() {
  local file
  for file in "$@"; do
    [ -f "$file" ] || die "no image archive $file"
    ctr --address "$DIR/run/containerd.sock" -n k8s.io images import "$file" >/dev/null ||
      die "importing $file failed"
  done
}

down() {
  [ "$(id -u)" = 0 ] || die "needs root"
  if [ -d "$DIR/run" ] && [ -f "$DIR/admin.kubeconfig" ] && [ -f "$DIR/run/kube-apiserver.pid" ]; then
    # Pods first, so that the runtime tears their networks down.
    timeout 20 "$(kube_bin)/kubectl" --kubeconfig "$DIR/admin.kubeconfig" delete pods --all -A \
      --grace-period=1 --wait=true >/dev/null 2>&1 || true
  fi
  stop kube-proxy kubelet kube-scheduler kube-controller-manager kube-apiserver
  # Containers the kubelet left: their shims, then containerd.
  if [ -S "$DIR/run/containerd.sock" ]; then
    for task in $(ctr --address "$DIR/run/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$DIR/run/containerd.sock" -n k8s.io tasks kill -s KILL "$task" >/dev/null 2>&1 || true
    done
  fi
  stop containerd
  pkill -9 -f "containerd-shim-runc-v2 -namespace k8s.io.*$DIR" 2>/dev/null || true
  for pid in $(pgrep -f "containerd-shim.*-address $DIR/run/containerd.sock" 2>/dev/null); do
    kill -9 "$pid" 2>/dev/null || true
  done
  stop etcd
  # Mounts the kubelet and containerd made under the state directory.
  if [ -d "$DIR" ]; then
    awk -v d="$DIR" '$2 ~ "^"d { print $2 }' /proc/mounts | sort -r | while read -r m; do
      umount -l "$m" 2>/dev/null || true
    done
  fi
  network_down
  cgroups_down
  log "down"
}

status() {
  local p
  for p in etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    if [ -f "$DIR/run/$p.pid" ] && kill -0 "$(cat "$DIR/run/$p.pid")" 2>/dev/null; then
      echo "$p: running (pid $(cat "$DIR/run/$p.pid"))"
    else
      echo "$p: stopped"
    fi
  done
  if [ -f "$DIR/admin.kubeconfig" ]; then
    kubectl_ get nodes -o wide 2>/dev/null || true
  fi
}

case "${1:-}" in
  prepare) prepare ;;
  up) up ;;
  down) down ;;
  purge)
    # down, then forget the cluster: etcd's data, containerd's images, certificates.
    down
    # Only what this script made there, in case INFERGATE_CLUSTER_DIR names a shared directory.
    rm -rf "$DIR"/{etcd,containerd,kubelet,cni,run,log,pki,pod-logs} "$DIR"/*.kubeconfig "$DIR"/*.toml "$DIR"/*.yaml
    rmdir "$DIR" 2>/dev/null || true
    log "purged $DIR"
    ;;
  status) status ;;
  load-image) shift; load_image "$@" ;;
  kubeconfig) echo "$DIR/admin.kubeconfig" ;;
  kubectl) shift; kubectl_ "$@" ;;
  env)
    echo "INFERGATE_CLUSTER_KUBECONFIG=$DIR/admin.kubeconfig"
    echo "INFERGATE_CLUSTER_NODE_IP=$NODE_IP"
    echo "INFERGATE_CLUSTER_POD_CIDR=$POD_CIDR"
    echo "INFERGATE_CLUSTER_SERVICE_CIDR=$SERVICE_CIDR"
    ;;
  *)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
