#!/usr/bin/env bash
# End-to-end tests of egress policy: a default-deny config that allows one
# CIDR:port and one FQDN (resolved by a DNS server in the internet
# namespace), rejected flows answered with TCP RST, short TTLs expiring,
# rule changes taking effect within 2 seconds. Prints
# "e2e-policy: N passed, M failed" last.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh


DIR=$(mktemp -d /tmp/egret-policy.XXXXXX)
STATUS_FILE=$DIR/status.json
cleanup() {
  stop_gateway
  stop_servers
  scripts/topology.sh down
  rm -rf /etc/netns/egt-pa "$DIR"
}
trap cleanup EXIT
build_release || { echo "e2e-policy: 0 passed, 1 failed (build)"; exit 1; }

write_policy_plan() { # $1: include the echo-web rule (yes/no); replaces the file atomically
  write_plan "$DIR/plan.next"
  cat >> "$DIR/plan.next" <<YAML
---
apiVersion: egret.dev/v1alpha1
kind: EgressPolicy
metadata: {name: lockdown, namespace: demo}
spec:
  gatewayConfiguration: config-a
  defaultAction: deny
  denyResponse: reject
  dnsTtlFloor: 3
  dnsResolvers: [198.19.0.53/32]
  rules:
  - {name: dns, action: allow, cidrs: [198.19.0.53/32], protocol: udp, ports: [53]}
  - {name: api, action: allow, fqdns: [api.example.com], protocol: tcp, ports: [80]}
YAML
  if [ "$1" = yes ]; then
    echo "  - {name: echo-web, action: allow, cidrs: [198.19.0.254/32], protocol: tcp, ports: [80]}" >> "$DIR/plan.next"
  fi
  mv "$DIR/plan.next" "$DIR/plan.yaml"
}

scripts/topology.sh up 1
for a in 198.19.0.53 198.19.0.10 198.19.0.11; do ip netns exec egt-net ip addr add "$a/32" dev lo; done
mkdir -p /etc/netns/egt-pa
echo "nameserver 198.19.0.53" > /etc/netns/egt-pa/resolv.conf
write_policy_plan yes
write_settings "$DIR/gateway.toml" "$DIR" 1
{ printf 'metrics_address = "127.0.0.1:9464"\n'; cat "$DIR/gateway.toml"; } > "$DIR/gw.tmp" && mv "$DIR/gw.tmp" "$DIR/gateway.toml"
start_servers "$DIR" || exit 1
for a in 198.19.0.10 198.19.0.11; do
  ip netns exec egt-net python3 scripts/echo_server.py "$a" >/dev/null 2>&1 &
  PIDS+=($!)
done
ip netns exec egt-net python3 scripts/dns_server.py 198.19.0.53 api.example.com=198.19.0.10@2 other.example.com=198.19.0.11@300 >"$DIR/dns.log" 2>&1 &
PIDS+=($!)
sleep 0.5
start_gateway "$DIR" || { echo "e2e-policy: 0 passed, 1 failed (start)"; exit 1; }

pa() { ip netns exec egt-pa "$@"; }
refused() { # curl exits 7 (connection refused): the gateway's RST
  pa curl -s -m 3 "$@" >/dev/null; [ $? -eq 7 ]
}

w=$(pa curl -s -m 3 http://198.19.0.254/)
check "allowed CIDR:port is reached, translated [$w]" bash -c "[[ '$w' == 198.19.100.* ]]"
check "a denied destination is rejected at once with a TCP RST" refused http://198.19.0.11/
check "a name no pod resolved stays closed (api.example.com's address by IP)" refused http://198.19.0.10/
r=$(pa curl -s -m 3 http://api.example.com/)
check "after the pod resolves api.example.com through the gateway, it is reached [$r]" bash -c "[[ '$r' == 198.19.100.* ]]"
check "another name resolves (DNS is allowed) but its address stays denied" refused http://other.example.com/
check "the other pod (config without policy) is unaffected" bash -c "ip netns exec egt-pb curl -s -m 3 http://198.19.0.11/ | grep -q 198.19.101."
sleep 4.5
check "the short DNS TTL (2 s, floor 3 s) expires: the address is closed again" refused --resolve api.example.com:80:198.19.0.10 http://api.example.com/
write_policy_plan no
t0=$(date +%s.%N)
closed=no
for _ in $(seq 20); do
  if refused http://198.19.0.254/; then closed=yes; break; fi
  sleep 0.1
done
t1=$(date +%s.%N)
secs=$(python3 -c "print(round($t1 - $t0, 2))")
check "removing the allow rule closes the destination within 2 s [${secs}s]" bash -c "[ $closed = yes ] && python3 -c 'import sys; sys.exit(0 if $secs <= 2 else 1)'"
sleep 1.2
check "denials are logged with their reason" grep -q "no rule matched" "$DIR/gateway.log"
ip netns exec egt-gw curl -s -m 2 http://127.0.0.1:9464/metrics > "$DIR/metrics.txt"
check "rule hit counts are exported per rule" bash -c "grep -qE '^egret_policy_rule_hits_total\{config=\"demo/config-a\",rule=\"api\"\} [1-9]' '$DIR/metrics.txt' && grep -qE '^egret_policy_rule_hits_total\{config=\"demo/config-a\",rule=\"default\"\} [1-9]' '$DIR/metrics.txt'"
d=$(status_sum nat drops policy_denied)
check "denials are counted [$d]" test "${d:-0}" -ge 4

echo "e2e-policy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
