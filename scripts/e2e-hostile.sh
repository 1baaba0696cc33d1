#!/usr/bin/env bash
# Hostile packets against egret-gateway, end to end: scapy (scripts/hostile.py)
# writes malformed, truncated, lying, fragmented, martian and unsolicited
# frames from the pod namespace, the unbound pod and the internet namespace,
# and checks each class lands under its own drop counter in the gateway's
# status file (or is left to the kernel by the XDP program, or forwarded
# intact where that is right), that the replies RFCs ask for come back
# (time exceeded), that the gateway stays up, and that a legitimate TCP and
# UDP flow started before the run keeps working through it and after.
# Addresses only from 198.18.0.0/15 (plus the martian ones under test, which
# never leave the egt-* namespaces). Prints "e2e-hostile: N passed, M failed" last.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

DIR=$(mktemp -d /tmp/egret-hostile.XXXXXX)
STATUS_FILE=$DIR/status.json
LEGIT_PID=
cleanup() {
  [ -n "$LEGIT_PID" ] && kill "$LEGIT_PID" 2>/dev/null
  stop_gateway
  stop_servers
  scripts/topology.sh down
  rm -rf "$DIR"
}
trap cleanup EXIT
t0=$(date +%s)

# scapy comes from Debian (python3-scapy), i.e. for /usr/bin/python3.
PY=
for p in /usr/bin/python3 python3; do
  if "$p" -c 'import scapy' 2>/dev/null; then PY=$p; break; fi
done
if [ -z "$PY" ]; then
  scripts/install-deps.sh >/dev/null && PY=/usr/bin/python3
  "$PY" -c 'import scapy' 2>/dev/null || { echo "e2e-hostile: 0 passed, 1 failed (no scapy)"; exit 1; }
fi

build_release || { echo "e2e-hostile: 0 passed, 1 failed (build)"; exit 1; }
scripts/topology.sh up 1
# The LAN bridge is a plain switch: with br_netfilter loaded it would check
# IPv4 headers itself and drop the malformed ones before the gateway sees them.
ip netns exec egt-lan sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true
write_plan "$DIR/plan.yaml"
write_settings "$DIR/gateway.toml" "$DIR" 1
start_servers "$DIR" && start_gateway "$DIR" || { echo "e2e-hostile: 0 passed, 1 failed (start)"; exit 1; }

mac() { ip netns exec "$1" cat "/sys/class/net/$2/address"; }
# Resolve the neighbours the raw frames and replies need before the first one.
ip netns exec egt-pa ping -c 1 -W 1 -q 198.19.0.254 >/dev/null 2>&1
ip netns exec egt-pc ping -c 1 -W 1 -q 198.18.0.1 >/dev/null 2>&1

echo "== a legitimate TCP and UDP flow, started before the hostile traffic"
# flow_probe.py prints its summary on SIGTERM; 0.5 s UDP timeout: replies
# slow under the floods still count.
ip netns exec egt-pa python3 scripts/flow_probe.py 198.19.0.254 150 0.5 >"$DIR/legit.json" &
LEGIT_PID=$!
sleep 1

echo "== hostile traffic"
"$PY" scripts/hostile.py attack "$STATUS_FILE" "$GATEWAY_PID" "$(mac egt-gw gw-in)" "$(mac egt-gw gw-out)" \
  "$(mac egt-pa pa)" "$(mac egt-pc pc)" "$(mac egt-net net-in)" >"$DIR/attack.log" 2>&1
rc=$?
while IFS= read -r line; do
  case "$line" in
    "ok "*) ok "${line#ok }" ;;
    "FAIL "*) fail "${line#FAIL }" ;;
    *) echo "        $line" ;;
  esac
done <"$DIR/attack.log"
grep -qE '^(ok|FAIL) ' "$DIR/attack.log" || fail "the hostile driver ran no check"
if grep -q '^Traceback' "$DIR/attack.log" || { [ "$rc" -ne 0 ] && ! grep -q '^FAIL ' "$DIR/attack.log"; }; then
  fail "the hostile driver ran to its end (exit $rc)"
fi

echo "== after"
sleep 1
kill -TERM "$LEGIT_PID" 2>/dev/null
for _ in $(seq 50); do [ -s "$DIR/legit.json" ] && break; sleep 0.1; done
wait "$LEGIT_PID" 2>/dev/null; LEGIT_PID=
legit=$(cat "$DIR/legit.json" 2>/dev/null || echo '{}')
check "the legitimate flow kept working throughout [$legit]" "$PY" - "$legit" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
rounds = d["seconds"] / 0.1
assert d["tcp_error"] is None, d["tcp_error"]
assert d["tcp_ok"] >= 0.5 * rounds, "too few TCP round trips"
assert d["udp_ok"] >= 0.9 * d["udp_sent"], "UDP losses"
assert len(d["udp_seen"]) == 1 and d["udp_seen"][0].startswith("198.19.100."), d["udp_seen"]
PY
check "the gateway process is alive" kill -0 "$GATEWAY_PID"
check "the gateway logged no panic" bash -c "! grep -qi panick '$DIR/gateway.log'"
a=$(ip netns exec egt-pa curl -s -m 3 http://198.19.0.254/)
check "a new connection after the run is translated [$a]" bash -c "[[ '$a' == 198.19.100.* ]]"
check "a short bulk TCP transfer after the run completes" ip netns exec egt-pa timeout 10 iperf3 -c 198.19.0.254 -t 1 -J

echo "e2e-hostile: ran in $(( $(date +%s) - t0 )) s"
echo "e2e-hostile: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
