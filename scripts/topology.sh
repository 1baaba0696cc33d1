#!/usr/bin/env bash
# The suites' topology: network namespaces and veth pairs, addresses only
# from 198.18.0.0/15. Its one writer is tests/egret.py's Topology (the
# picture is there); this is its command line for bash and by hand.
#
# Usage: topology.sh up [QUEUES] | down
set -euo pipefail
case "${1:-}" in
  up) exec python3 "$(dirname "$0")/../tests/egret.py" topology up "${2:-1}" ;;
  down) exec python3 "$(dirname "$0")/../tests/egret.py" topology down ;;
  *) echo "usage: $0 up [QUEUES] | down" >&2; exit 2 ;;
esac
