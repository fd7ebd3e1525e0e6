#!/usr/bin/env bash
# The plain HTTP quick start: infergate serving examples/standalone/ to a real
# Envoy, in front of two local HTTP servers ("blue" and "green").
# It sends a few requests, shows who answered each, and cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-kube
# shellcheck source=../scripts/env.sh
source scripts/env.sh

work="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

python3 examples/echo_server.py blue 9001 & pids+=($!)
python3 examples/echo_server.py green 9002 & pids+=($!)
"$CARGO_TARGET_DIR/debug/infergate" standalone --config examples/standalone --work-dir "$work" \
  --status-file "$work/status.yaml" 2>"$work/infergate.log" & pids+=($!)

echo "waiting for Envoy on 127.0.0.1:8080 ..."
for _ in $(seq 1 100); do
  curl -s -o /dev/null http://127.0.0.1:8080/ && break
  sleep 0.1
done

echo
echo "== GET /blue/page (rule: PathPrefix /blue -> blue)"
curl -s http://127.0.0.1:8080/blue/page
echo "== GET / with x-canary: true (rule: header match -> green)"
curl -s -H 'x-canary: true' http://127.0.0.1:8080/
echo "== 20 x GET / (rule: 80/20 split blue/green)"
for _ in $(seq 1 20); do curl -s http://127.0.0.1:8080/; done | awk '{print $1}' | sort | uniq -c
echo
echo "== statuses written by infergate ($work/status.yaml), Gateway conditions:"
grep -A3 "condition_type: Programmed" "$work/status.yaml" | head -4
echo
echo "quick start done; infergate's log:"
sed 's/^/  /' "$work/infergate.log" | head -20
