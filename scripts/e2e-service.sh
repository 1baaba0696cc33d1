#!/usr/bin/env bash
# End-to-end tests of the gateway as a node service: systemd unit, sd_notify
# readiness, restarts that keep connections, recovery after kill -9,
# Prometheus metrics, NAT log records, SIGHUP. Prints
# "e2e-service: N passed, M failed" last.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh


DIR=$(mktemp -d /tmp/egret-service.XXXXXX)
STATUS_FILE=$DIR/status.json
cleanup() {
  [ -n "${NOTIFY_PID:-}" ] && kill "$NOTIFY_PID" 2>/dev/null
  stop_gateway
  stop_servers
  scripts/topology.sh down
  rm -rf "$DIR"
}
trap cleanup EXIT
build_release || { echo "e2e-service: 0 passed, 1 failed (build)"; exit 1; }

sed "s#/usr/local/bin/egret-gateway#$GATEWAY#g" scripts/egret-gateway.service > "$DIR/egret-gateway.service"
if command -v systemd-analyze >/dev/null; then
  check "systemd-analyze verify accepts the unit" systemd-analyze verify "$DIR/egret-gateway.service"
else
  echo "  skip  systemd-analyze is not installed"
fi

scripts/topology.sh up 1
write_plan "$DIR/plan.yaml"
write_settings "$DIR/gateway.toml" "$DIR" 1
{ printf 'metrics_address = "127.0.0.1:9464"\nsnapshot_interval_secs = 1\n'; cat "$DIR/gateway.toml"; printf '[nat_log]\nenabled = true\n'; } > "$DIR/gw.tmp"
mv "$DIR/gw.tmp" "$DIR/gateway.toml"
# The gateway runs with NOTIFY_SOCKET pointing at a socket we read: the real
# sd_notify protocol, without systemd as PID 1.
python3 - "$DIR/notify.sock" >"$DIR/notify.log" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
while True:
    print(s.recv(4096).decode().replace("\n", " "), flush=True)
PY
NOTIFY_PID=$!
start_servers "$DIR" || exit 1
sleep 0.3
export NOTIFY_SOCKET=$DIR/notify.sock WATCHDOG_USEC=2000000
start_gateway "$DIR" || { echo "e2e-service: $passed passed, 1 failed (start)"; exit 1; }
sleep 1.5
check "READY=1 is sent once serving, and the watchdog is fed" bash -c "grep -q 'READY=1' '$DIR/notify.log' && grep -q 'WATCHDOG=1' '$DIR/notify.log'"

scrape() { ip netns exec egt-gw curl -s -m 2 http://127.0.0.1:9464/metrics; }
m1=$(scrape | grep -E '^egret_packets_total\{worker="0",direction="in2out"\}' | awk '{print $2}')

# A TCP connection and a UDP flow run for 10 s; the gateway restarts at 3 s.
ip netns exec egt-pa python3 scripts/flow_probe.py 198.19.0.254 10 >"$DIR/probe.json" 2>&1 &
probe=$!
sleep 3
stop_gateway
test -s "$DIR/sessions.json" && ok "sessions saved on stop" || fail "sessions saved on stop"
start_gateway "$DIR"
wait $probe
res=$(cat "$DIR/probe.json")
echo "    probe: $res"
check "a long-running TCP connection survives a restart" python3 -c "import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d['tcp_error'] is None and d['tcp_ok'] > 60 else 1)" "$res"
check "a UDP flow survives a restart with the same egress address and port" python3 -c "import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if len(d['udp_seen']) == 1 and d['udp_ok'] > 50 else 1)" "$res"

sleep 1.5
m=$(scrape)
m2=$(grep -E '^egret_packets_total\{worker="0",direction="in2out"\}' <<<"$m" | awk '{print $2}')
check "metrics: packet counters move [${m1:-?} -> ${m2:-?} (restart resets counters; after it: ${m2:-0} > 0)]" test "${m2:-0}" -gt 0
check "metrics: live sessions by config and protocol" grep -qE '^egret_sessions\{config="demo/config-a",proto="tcp"\} [1-9]' <<<"$m"
check "metrics: ports in use per egress address" grep -qE '^egret_ports_in_use\{address="198.19.100.[0-9]+",config="demo/config-a",proto="udp"\} [1-9]' <<<"$m"
check "metrics: XDP and AF_XDP modes" grep -qE '^egret_mode\{interface="gw-in",xdp="Native",afxdp="copy"\} 1' <<<"$m"

seen=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['udp_seen'][0])" "$res" 2>/dev/null)
check "the NAT log has the UDP session: pod 198.18.0.2 -> egress $seen" \
  bash -c "sed 's/\x1b\[[0-9;]*m//g' '$DIR/gateway.log' | grep 'event=open' | grep 'pod=198.18.0.2:' | grep -q 'egress=$seen'"
check "the NAT log leaves destinations out by default" bash -c "! sed 's/\x1b\[[0-9;]*m//g' '$DIR/gateway.log' | grep 'event=open' | grep -q 'dst=198'"

# kill -9: back within 2 s, sessions from the last periodic snapshot.
ip netns exec egt-pa python3 scripts/flow_probe.py 198.19.0.254 6 >"$DIR/probe2.json" 2>&1 &
probe=$!
sleep 2.5
kill -KILL "$GATEWAY_PID"; wait "$GATEWAY_PID" 2>/dev/null; GATEWAY_PID=
t0=$(date +%s.%N)
start_gateway "$DIR"
up=no
for _ in $(seq 40); do
  r=$(ip netns exec egt-pb curl -s -m 1 http://198.19.0.254/) && [[ "$r" == 198.19.101.* ]] && { up=yes; break; }
  sleep 0.05
done
t1=$(date +%s.%N)
secs=$(python3 -c "print(round($t1 - $t0, 2))")
check "after kill -9 the gateway is back and new connections work within 2 s [${secs}s]" bash -c "[ $up = yes ] && python3 -c 'import sys; sys.exit(0 if $secs <= 2 else 1)'"
wait $probe
res2=$(cat "$DIR/probe2.json")
echo "    probe after kill -9: $res2"
check "a TCP connection older than the last snapshot survives kill -9" python3 -c "import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d['tcp_error'] is None else 1)" "$res2"

# SIGHUP: settings that need a restart are reported as such.
sed -i 's/^sessions_per_worker = .*/sessions_per_worker = 131072/' "$DIR/gateway.toml"
kill -HUP "$GATEWAY_PID"
sleep 0.5
check "SIGHUP reports settings that need a restart" bash -c "grep 'need a restart' '$DIR/gateway.log' | grep -q sessions_per_worker"
check "check-config explains a bad field and fails" bash -c "printf 'router_ip = \"x\"\n[interfaces]\ninside = \"a\"\n' > '$DIR/bad.toml'; ! '$GATEWAY' check-config '$DIR/bad.toml' 2> '$DIR/bad.err' && grep -q router_ip '$DIR/bad.err'"

# The forward guard outlives the process (a restart leaks nothing, as the
# probes above show: one egress endpoint seen); remove-guard takes it away.
stop_gateway
check "the forward guard stays after the gateway stops" ip netns exec egt-gw nft list table ip egret_guard
check "while the gateway is down the pod's traffic does not leave untranslated" \
  bash -c '! ip netns exec egt-pa curl -s -m 2 http://198.19.0.254/'
check "egret-gateway remove-guard removes it" \
  bash -c "ip netns exec egt-gw '$GATEWAY' remove-guard | grep -q removed && ! ip netns exec egt-gw nft list table ip egret_guard 2>/dev/null"

echo "e2e-service: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
