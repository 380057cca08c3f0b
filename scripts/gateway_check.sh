#!/usr/bin/env bash
# The gateway example as a harness runs it: its command line, its first
# line on stdout, a completion with curl, the openai Python SDK
# (scripts/gateway_openai_python.py) when Python and the package can be
# had, its /metrics, and a clean stop on SIGTERM. Run from anywhere; CI runs it.
#
# The SDK comes from the `openai` package of the Python that runs this
# (GATEWAY_PYTHON, default python3), else from a venv made here with pip;
# when neither works (no Python, no venv module, no network), that part is
# skipped and says so, and the rest still runs.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet --example gateway
bin="$target/debug/examples/gateway"

work="$(mktemp -d)"
gateway_pid=""
cleanup() {
  if [ -n "$gateway_pid" ] && kill -0 "$gateway_pid" 2>/dev/null; then
    kill "$gateway_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# A bad --config is refused at once, naming the field.
printf '[limits]\nrpm = 0\n' >"$work/bad.toml"
if "$bin" --listen 127.0.0.1:0 --config "$work/bad.toml" >"$work/bad.out" 2>"$work/bad.err"; then
  echo "gateway check: a config with rpm = 0 was accepted" >&2
  exit 1
fi
if ! grep -q 'limits.rpm' "$work/bad.err"; then
  echo "gateway check: the config error does not name limits.rpm:" >&2
  cat "$work/bad.err" >&2
  exit 1
fi
echo "gateway check: a bad --config is refused: $(head -n 1 "$work/bad.err")"

# The provider's tokens per window and the retry settings from a file.
printf 'provider = "openai"\n[limits]\ntpm = 100000\n[retry]\nmax_attempts = 3\n' >"$work/gateway.toml"
tenant_rpm=5
"$bin" --listen 127.0.0.1:0 --config "$work/gateway.toml" --rpm 100 --window-secs 60 --concurrency 8 \
  --tenant-rpm "$tenant_rpm" --sim-faults false >"$work/out" 2>"$work/err" &
gateway_pid=$!

# The first line on stdout says where it listens (bounded wait).
for _ in $(seq 1 300); do
  if grep -q '^listening on http://' "$work/out" 2>/dev/null; then break; fi
  if ! kill -0 "$gateway_pid" 2>/dev/null; then
    cat "$work/err" >&2
    echo "gateway check: the gateway exited before listening" >&2
    exit 1
  fi
  sleep 0.1
done
first="$(head -n 1 "$work/out")"
case "$first" in
  "listening on http://"*) ;;
  *) echo "gateway check: the first line is not 'listening on http://ADDR': $first" >&2; exit 1 ;;
esac
url="${first#listening on }"
echo "gateway check: $first"

if command -v curl >/dev/null 2>&1; then
  answer="$(curl -sS --max-time 30 "$url/v1/chat/completions" \
    -H 'authorization: Bearer sk-curl' -H 'content-type: application/json' \
    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Text: I love it"}],"max_tokens":8}')"
  case "$answer" in
    *'"content":"positive"'*) echo "gateway check: curl got a completion" ;;
    *) echo "gateway check: unexpected answer to curl: $answer" >&2; exit 1 ;;
  esac
else
  echo "gateway check: skipped the curl request: curl is missing"
fi

python="${GATEWAY_PYTHON:-python3}"
sdk=""
if ! command -v "$python" >/dev/null 2>&1; then
  echo "gateway check: skipped the openai Python SDK: $python is missing"
elif "$python" -c 'import openai' 2>/dev/null; then
  sdk="$python"
elif "$python" -m venv "$work/venv" >/dev/null 2>&1 \
  && timeout 300 "$work/venv/bin/pip" install --quiet --disable-pip-version-check openai >"$work/pip" 2>&1; then
  sdk="$work/venv/bin/python"
else
  echo "gateway check: skipped the openai Python SDK: no venv, or pip could not install openai (offline?)"
fi
if [ -n "$sdk" ]; then
  "$sdk" scripts/gateway_openai_python.py --base-url "$url/v1" --tenant-rpm "$tenant_rpm"
fi

# GET /metrics: the Prometheus scrape counts the attempts above, with the
# GenAI conventions' names and the provider and model they were for.
if command -v curl >/dev/null 2>&1; then
  curl -sS --max-time 30 "$url/metrics" >"$work/metrics"
  attempts="$(awk '/^gen_ai_client_operation_duration_count\{/ { n += $NF } END { print n + 0 }' "$work/metrics")"
  if [ "$attempts" -lt 1 ] \
    || ! grep -q '^gen_ai_client_token_usage_sum{gen_ai_system="openai",llm_key="default",gen_ai_request_model="gpt-4o-mini",gen_ai_token_type="output"}' "$work/metrics"; then
    cat "$work/metrics" >&2
    echo "gateway check: /metrics does not count the completions" >&2
    exit 1
  fi
  echo "gateway check: /metrics counts $attempts attempts upstream"
else
  echo "gateway check: skipped /metrics: curl is missing"
fi

# SIGTERM: it finishes what is in flight, prints its summary, exits 0.
kill -TERM "$gateway_pid"
status=0
wait "$gateway_pid" || status=$?
gateway_pid=""
if [ "$status" -ne 0 ] || ! grep -q '^breaker trips' "$work/err"; then
  cat "$work/err" >&2
  echo "gateway check: the gateway did not stop cleanly on SIGTERM (exit $status)" >&2
  exit 1
fi
echo "gateway check: stopped cleanly on SIGTERM"
