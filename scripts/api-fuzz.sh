#!/usr/bin/env bash
# Fuzzes the operator API with schemathesis, from the OpenAPI document the
# API itself serves (GET /api/v1/openapi.json): every operation gets valid
# and invalid requests (malformed JSON, unknown fields, wrong types, out of
# range values, bad query and path parameters, unexpected methods), and each
# response must be no server error, have a documented status, content type
# and headers, and match its schema; invalid requests must get a 4xx.
# Settings and the few justified exceptions: scripts/api-fuzz.toml.
#
# Isolation: `slipway serve` and schemathesis run together in a fresh
# network namespace that has only loopback (unshare --net). schemathesis
# enrols BMCs and UPSes at random addresses and the server tries to reach
# them: there, every such attempt fails at once and nothing leaves this
# machine. The appliance's boot services listen on `lo` only (DHCP and
# TFTP on unusual ports, nothing can answer them there), with a stand-in
# ramdisk (nothing is built or downloaded), a throwaway data directory and
# a fixed bootstrap admin token; in its own namespace every port is free.
#
# Usage: bash scripts/api-fuzz.sh [SECONDS]   (schemathesis' time budget, default 150)
# Uses $SLIPWAY_BIN, else builds the release binary. Exits non-zero when
# schemathesis finds a problem; its last line is a one-line summary.
set -euo pipefail
cd "$(dirname "$0")/.."
budget=${1:-150}
venv=/var/cache/slipway/venv-schemathesis

if [ "${SLIPWAY_API_FUZZ_INSIDE:-}" != 1 ]; then
  [ -x "$venv/bin/schemathesis" ] || { echo "api-fuzz: $venv missing: run scripts/prereqs.sh" >&2; exit 1; }
  if [ -z "${SLIPWAY_BIN:-}" ]; then
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/slipway/cargo-target}"
    cargo build --release --locked --bin slipway --bin slipway-lab
    SLIPWAY_BIN="$CARGO_TARGET_DIR/release/slipway"
  fi
  work=$(mktemp -d /tmp/slipway-api-fuzz.XXXXXX)
  # SLIPWAY_API_FUZZ_LOGS=DIR keeps the server's and schemathesis' logs and the report there.
  trap '[ -z "${SLIPWAY_API_FUZZ_LOGS:-}" ] || { mkdir -p "$SLIPWAY_API_FUZZ_LOGS"; cp "$work"/*.log "$work"/*.json "$SLIPWAY_API_FUZZ_LOGS"/ 2>/dev/null; }; rm -rf "$work"' EXIT
  # Everything below runs in a new network namespace: only `lo`, down until
  # we bring it up; it disappears with its last process.
  status=0
  SLIPWAY_API_FUZZ_INSIDE=1 SLIPWAY_BIN="$SLIPWAY_BIN" WORK="$work" unshare --net -- bash "$0" "$budget" || status=$?
  exit "$status"
fi

# Inside the namespace.
ip link set lo up
others=$(ip -o link show | grep -v ': lo:' || true)
[ -z "$others" ] || { echo "api-fuzz: the namespace has links other than lo: $others" >&2; exit 1; }
[ -z "$(ip route show default)" ] || { echo "api-fuzz: the namespace has a default route" >&2; exit 1; }

token=api-fuzz-admin-token-0123456789abcdef0123456789
api=http://127.0.0.1:8080
cat > "$WORK/slipway.toml" <<EOF
data_dir = "$WORK/data"
cache_dir = "$WORK/cache"

[api]
listen = "127.0.0.1:8080"
tls = "off"

[provisioning]
# Boot services on loopback, the only link there is: the seeding below
# boots the fuzz machine's discovery through the boot HTTP face as its
# agent would, so it is ready and deployable.
interface = "lo"
address = "127.0.0.1"
prefix_len = 24
pool_start = "127.0.0.100"
pool_end = "127.0.0.199"
dhcp_port = 6767
tftp_port = 6969
http_port = 8081
router_advertisements = false

[boot]
ipxe_dir = "$WORK/ipxe"
ramdisk_dir = "$WORK/ramdisk"
# No archive to fetch Debian's signed shim and GRUB from in this
# namespace; the API under test does not depend on them.
uefi_pxe = "ipxe"

[oob]
# Devices at random addresses fail fast; pollers back off quickly.
request_timeout_secs = 2
min_backoff_secs = 1
max_backoff_secs = 4
EOF

mkdir -p "$WORK/ipxe" "$WORK/ramdisk" "$WORK/data"
# The fuzz machine holds a DHCP lease on 127.0.0.150 (loopback carries no
# DHCP broadcast, so it is put in the lease journal the appliance loads at
# start): boot scripts and agent tokens go only to a MAC's lease holder.
machine_ip=127.0.0.150
echo "+ 52:54:00:12:34:56 $machine_ip bound 4102444800" > "$WORK/data/dhcp-leases"
echo stand-in > "$WORK/ipxe/undionly.kpxe"
echo stand-in > "$WORK/ramdisk/vmlinuz"
echo stand-in > "$WORK/ramdisk/initrd.img"
SLIPWAY_BOOTSTRAP_TOKEN=$token "$SLIPWAY_BIN" serve --config "$WORK/slipway.toml" > "$WORK/serve.log" 2>&1 &
server=$!
stop_server() { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; }
trap stop_server EXIT
for _ in $(seq 100); do
  curl -fsS "$api/healthz" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { echo "api-fuzz: slipway serve exited:" >&2; tail -20 "$WORK/serve.log" >&2; exit 1; }
  sleep 0.2
done
curl -fsS "$api/healthz" >/dev/null || { echo "api-fuzz: slipway serve did not come up" >&2; tail -20 "$WORK/serve.log" >&2; exit 1; }

# Something for the operations to find, so they get past 404, named as the
# document's examples name them: machine 52:54:00:12:34:56 in rack r7
# (created by enrolling its BMC, a simulated Redfish BMC on loopback
# driving an in-memory machine, then discovered through the boot face as
# its agent would: `ready`), image debian-12 (available) and fuzz-pending
# (waiting for its content), UPS r7-ups (nobody answers on its port),
# firmware bios-2.1, a viewer token and a campaign scheduled for 2100.
# schemathesis also reuses the ids it sees in responses.
cat > "$WORK/vbmc.json" <<EOF
[{"name": "fuzz1", "listen": "127.0.0.1:8000", "qmp": "$WORK/none.qmp", "username": "admin",
  "password": "fuzz-bmc-password",
  "smbios": {"serial": "FUZZ-0001", "uuid": "00000000-0000-4000-8000-00000000f001",
             "manufacturer": "Slipway", "product": "API fuzz"},
  "mac": "52:54:00:12:34:56", "disk_serial": "DISK-1"}]
EOF
"$SLIPWAY_BIN" lab vbmc --memory --config "$WORK/vbmc.json" > "$WORK/vbmc.log" 2>&1 &
vbmc=$!
trap 'kill "$vbmc" 2>/dev/null || true; stop_server' EXIT
call() { # METHOD PATH [JSON]: fails the run unless the API answers 2xx
  curl -fsS -o /dev/null -X "$1" -H "Authorization: Bearer $token" -H "Content-Type: application/json" \
    ${3:+--data "$3"} "$api$2" || { echo "api-fuzz: seeding $1 $2 failed" >&2; exit 1; }
}
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:8000/redfish/v1" && break; sleep 0.1; done
mac=52:54:00:12:34:56
call POST /api/v1/bmcs '{"address": "http://127.0.0.1:8000", "protocol": "redfish", "username": "admin",
  "password": "fuzz-bmc-password", "rack": "r7"}'
# Discovery as the machine's agent does it: the boot script carries its token.
agent_token=$(curl -fsS --interface "$machine_ip" "http://127.0.0.1:8081/boot/${mac//:/-}.ipxe" | sed -n 's/.*slipway\.token=\([^ ]*\).*/\1/p' | sed -n 1p)
[ -n "$agent_token" ] || { echo "api-fuzz: no agent token in the boot script" >&2; exit 1; }
curl -fsS -o /dev/null --interface "$machine_ip" -H "Authorization: Bearer $agent_token" -H "Content-Type: application/json" \
  --data '{"source": "in_band", "system": {"vendor": "Slipway", "product": "API fuzz", "serial": "FUZZ-0001",
    "uuid": "00000000-0000-4000-8000-00000000f001"}, "cpu": {"model": "fuzz", "count": 2},
    "memory": {"total_bytes": 4294967296}, "disks": [{"name": "vda", "size_bytes": 17179869184, "model": null,
    "serial": "DISK-1", "rotational": false}], "nics": [{"name": "eth0", "mac": "'"$mac"'", "link": true,
    "speed_mbps": 1000}]}' http://127.0.0.1:8081/api/v1/agent/inventory \
  || { echo "api-fuzz: posting the machine's inventory failed" >&2; exit 1; }
call POST /api/v1/images '{"name": "debian-12", "os": "debian", "version": "12"}'
head -c 1048576 /dev/zero > "$WORK/image.raw"
curl -fsS -o /dev/null -X PUT -H "Authorization: Bearer $token" -H "Content-Type: application/octet-stream" \
  --data-binary @"$WORK/image.raw" "$api/api/v1/images/debian-12/content"
call POST /api/v1/images '{"name": "fuzz-pending", "os": "debian", "version": "12"}'
call POST /api/v1/ups '{"name": "r7-ups", "protocol": "nut", "address": "127.0.0.1:3493", "ups": "eaton1",
  "feeds": {"racks": ["r7"]}}'
curl -fsS -o /dev/null -X PUT -H "Authorization: Bearer $token" --data-binary "fuzz firmware" \
  "$api/api/v1/firmware/bios-2.1"
call POST /api/v1/tokens '{"name": "fuzz-viewer", "role": "viewer"}'
call POST /api/v1/campaigns '{"name": "fuzz", "targets": {"machines": ["'"$mac"'"]},
  "action": {"firmware": {"component": "BIOS", "firmware": "bios-2.1", "version": "2.1"}},
  "schedule": {"at": "2100-01-01T00:00:00Z"}}'
state=$(curl -fsS -H "Authorization: Bearer $token" "$api/api/v1/machines/$mac" | sed -n 's/.*"state":"\([a-z]*\)".*/\1/p')
[ "$state" = ready ] || { echo "api-fuzz: the seeded machine is ${state:-missing}, not ready" >&2; exit 1; }

started=$(date +%s)
status=0
# The operator API's own document, as served; admin: every operation is open to it.
SCHEMATHESIS_HOOKS=scripts/api-fuzz-hooks.py "$venv/bin/schemathesis" --config-file scripts/api-fuzz.toml run "$api/api/v1/openapi.json" \
  --header "Authorization: Bearer $token" \
  --max-time "$budget" \
  --report json --report-json-path "$WORK/report.json" \
  > "$WORK/schemathesis.log" 2>&1 || status=$?
elapsed=$(( $(date +%s) - started ))
cat "$WORK/schemathesis.log"

# The server must still be up and must not have panicked.
if ! kill -0 "$server" 2>/dev/null; then
  echo "api-fuzz: slipway serve died during the run" >&2
  status=1
fi
if grep -q "panicked" "$WORK/serve.log"; then
  echo "api-fuzz: the server panicked:" >&2
  grep -A5 "panicked" "$WORK/serve.log" | head -40 >&2
  status=1
fi
if [ "$status" -ne 0 ]; then
  echo "== last lines of the server's log"
  tail -40 "$WORK/serve.log"
fi
"$venv/bin/python" - "$WORK/report.json" "$elapsed" "$status" <<'PY'
import json, sys
path, elapsed, status = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    r = json.load(open(path))
except (OSError, ValueError):
    r = {}
ops, cases = r.get("operations", {}), r.get("test_cases", {})
errors = sum(e.get("count", 0) for e in r.get("errors", []))
print(f"api fuzz: schemathesis {r.get('schemathesis_version', '?')}, {ops.get('tested', '?')} operations, "
      f"{cases.get('generated', '?')} test cases, {cases.get('unique_failures', '?')} failures, "
      f"{errors} errors in {elapsed} s: {'ok' if status == 0 else 'FAILED'}")
PY
exit "$status"
