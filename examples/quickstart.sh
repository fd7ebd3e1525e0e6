#!/usr/bin/env bash
# The inference quick start, standalone: a Gateway and an HTTPRoute to two
# InferencePools serving two models behind one address (examples/inference/),
# served by infergate to a real Envoy; simulated model servers (infergate-sim:
# llama-3-8b on 127.0.0.2-4:8000, qwen-2.5-7b on 127.0.0.5:8000) and each
# pool's endpoint picker (infergate-epp, TLS on 127.0.0.1:9002 and :9012).
# It keeps one model server busy, sends completions through the gateway,
# shows which server answered each and why (the picker's queue and KV-cache
# figures); then lists the models, sends a request for each model, and one
# for a model nobody serves; then cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --no-kube
# shellcheck source=../scripts/env.sh
source scripts/env.sh
bin="$CARGO_TARGET_DIR/debug"

work="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

wait_for() { # url [curl args...]
  local url="$1"; shift
  for _ in $(seq 1 150); do
    curl -s -o /dev/null --fail "$@" "$url" && return 0
    sleep 0.1
  done
  echo "quick start: $url did not answer; logs in $work" >&2
  tail -n 20 "$work"/*.log >&2
  exit 1
}

# Model servers: 2 slots each, 100 ms to the first token, 20 ms a token.
for s in a:127.0.0.2 b:127.0.0.3 c:127.0.0.4; do
  "$bin/infergate-sim" --bind "${s#*:}:8000" --name "vllm-${s%%:*}" --max-num-seqs 2 \
    --model llama-3-8b --lora llama-3-8b-sql-lora \
    --ttft-ms 100 --inter-token-ms 20 --kv-cache-tokens 2000 2>"$work/sim-${s%%:*}.log" & pids+=($!)
done
"$bin/infergate-sim" --bind 127.0.0.5:8000 --name qwen-a --model qwen-2.5-7b \
  --ttft-ms 100 --inter-token-ms 20 2>"$work/sim-qwen.log" & pids+=($!)
"$bin/infergate-epp" --bind-address 127.0.0.1 --pool-name vllm --pool-namespace default \
  --endpoints 127.0.0.2:8000,127.0.0.3:8000,127.0.0.4:8000 2>"$work/epp.log" & pids+=($!)
"$bin/infergate-epp" --bind-address 127.0.0.1 --pool-name qwen --pool-namespace default \
  --grpc-port 9012 --grpc-health-port 9013 --metrics-port 9092 \
  --endpoints 127.0.0.5:8000 2>"$work/epp-qwen.log" & pids+=($!)
"$bin/infergate" standalone --config examples/inference --enable-inference-extension \
  --work-dir "$work" --status-file "$work/status.yaml" 2>"$work/infergate.log" & pids+=($!)

json=(-H 'content-type: application/json')
for ip in 127.0.0.2 127.0.0.3 127.0.0.4 127.0.0.5; do wait_for "http://$ip:8000/health"; done
for model in llama-3-8b qwen-2.5-7b; do
  wait_for http://127.0.0.1:8080/v1/completions "${json[@]}" -X POST \
    -d "{\"model\":\"$model\",\"prompt\":\"hi\",\"max_tokens\":1}"
done
echo "Envoy on 127.0.0.1:8080 routes /v1 by model: llama-3-8b to InferencePool default/vllm,"
echo "qwen-2.5-7b to default/qwen, each through its own picker."

echo
echo "== keeping vllm-a busy: 6 long completions sent straight to it (2 run, 4 queue)"
for _ in $(seq 1 6); do
  curl -s -o /dev/null http://127.0.0.2:8000/v1/completions \
    -d '{"model":"llama-3-8b","prompt":"a long story please","max_tokens":300}' & pids+=($!)
done
sleep 0.5

picker_view() {
  curl -s http://127.0.0.1:9090/metrics | awk -F'[{}" ]+' '
    /^infergate_epp_endpoint_queue/ { q[$5] = $NF }
    /^infergate_epp_endpoint_kv_cache_usage/ { kv[$5] = $NF }
    END { for (e in q) printf "    %s queue=%s kv=%.2f\n", e, q[e], kv[e] }' | sort
}
echo "   the picker's view of the pool (from each server's vLLM /metrics):"
picker_view

echo
echo "== 6 completions of llama-3-8b through the gateway"
for i in $(seq 1 6); do
  curl -s -D "$work/headers" http://127.0.0.1:8080/v1/completions "${json[@]}" \
    -d "{\"model\":\"llama-3-8b\",\"prompt\":\"request $i\",\"max_tokens\":8}" -o "$work/body"
  served="$(grep -i '^x-served-by' "$work/headers" | tr -d '\r' | cut -d' ' -f2)"
  endpoint="$(grep -i '^x-served-endpoint' "$work/headers" | tr -d '\r' | cut -d' ' -f2)"
  text="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["choices"][0]["text"].strip())' "$work/body")"
  echo "   request $i -> $served ($endpoint): $text"
done
echo "   (vllm-a at 127.0.0.2 has a queue, so the picker sends work to the others)"

echo
echo "== two models behind one address"
echo "   GET /v1/models (answered by Envoy from the routes):"
curl -s http://127.0.0.1:8080/v1/models |
  python3 -c 'import json,sys; print("     " + ", ".join(m["id"] for m in json.load(sys.stdin)["data"]))'
for model in llama-3-8b llama-3-8b-sql-lora qwen-2.5-7b gpt-unknown; do
  curl -s -D "$work/headers" http://127.0.0.1:8080/v1/chat/completions "${json[@]}" -o "$work/body" \
    -d "{\"model\":\"$model\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":4}"
  status="$(head -1 "$work/headers" | cut -d' ' -f2)"
  served="$(grep -i '^x-served-by' "$work/headers" | tr -d '\r' | cut -d' ' -f2 || true)"
  answer="$(python3 -c 'import json,sys; b=json.load(open(sys.argv[1])); print(b["choices"][0]["message"]["content"].strip() if "choices" in b else b["error"]["message"])' "$work/body")"
  echo "   $model -> $status ${served:-(the gateway)}: $answer"
done

echo
echo "== the pool's status, as infergate reports it for Gateway inference-gateway"
grep -A14 "name: vllm$" "$work/status.yaml" | grep -E "condition_type|status:|reason" | paste - - - | sed 's/^ */   /'
echo
echo "quick start done; docs/quickstart.md shows how to run the same pieces by hand."
