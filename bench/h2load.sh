#!/usr/bin/env bash
# Cross-check `keygate bench` with a load generator that is not ours: h2load (Debian's
# nghttp2-client) speaking gRPC unary over TLS to a running `keygate dev` (docs/performance.md).
#   bench/h2load.sh health|exchange|read [REQUESTS] [CLIENTS] [STREAMS_PER_CLIENT]
# Environment: KEYGATE_DEV_DIR (default ./keygate-dev), KEYGATE (the binary, default
# target/release/keygate), PIN_GENERATOR / PIN_DAEMON (cpu lists for taskset, default 0 and 1).
# Prints h2load's summary and the daemon's CPU per request (from /proc, user + system).
set -euo pipefail
scenario=${1:?health|exchange|read}
n=${2:-30000}
c=${3:-8}
m=${4:-4}
dir=${KEYGATE_DEV_DIR:-./keygate-dev}
bin=${KEYGATE:-target/release/keygate}
# shellcheck disable=SC1091
. "$dir/env.sh"
hostport=${KEYGATE_ADDR#https://}
pid=$(pgrep -f "keygate dev --dir $dir" | head -n1 || true)
[ -n "$pid" ] || pid=$(pgrep -f "keygate dev" | head -n1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# a gRPC message: flag byte 0, 4-byte big-endian length, the protobuf
frame() { python3 -c 'import sys,struct; b=sys.stdin.buffer.read(); sys.stdout.buffer.write(b"\0"+struct.pack(">I",len(b))+b)'; }
# protobuf string fields: field number, value
pbs() { python3 -c '
import sys
out=b""
args=sys.argv[1:]
for i in range(0,len(args),2):
    f=int(args[i]); v=args[i+1].encode()
    n=len(v); ln=b""
    while True:
        b=n&0x7f; n>>=7
        ln+=bytes([b|(0x80 if n else 0)])
        if not n: break
    out+=bytes([(f<<3)|2])+ln+v
sys.stdout.buffer.write(out)' "$@"; }

token=$("$bin" dev token --dir "$dir")
headers=(-H 'content-type: application/grpc' -H 'te: trailers')
case $scenario in
  health) path=/grpc.health.v1.Health/Check; printf '' | frame >"$tmp/body" ;;
  exchange)
    path=/keygate.v1.TokenExchange/Exchange
    pbs 1 "$token" 2 urn:ietf:params:oauth:token-type:id_token 3 demo | frame >"$tmp/body" ;;
  read)
    path=/keygate.v1.Secrets/Get
    cred=$(KG_PLATFORM_TOKEN="$token" "$bin" exchange --token-env KG_PLATFORM_TOKEN --role demo --ttl 900 | tail -n1)
    headers+=(-H "authorization: Bearer $cred")
    pbs 1 demo/app | frame >"$tmp/body" ;;
  *) echo "unknown scenario $scenario" >&2; exit 2 ;;
esac
taskset -a -c -p "${PIN_DAEMON:-1}" "$pid" >/dev/null
ticks() { awk '{print $14+$15}' "/proc/$pid/stat"; }
before=$(ticks)
taskset -c "${PIN_GENERATOR:-0}" h2load -n "$n" -c "$c" -m "$m" -d "$tmp/body" "${headers[@]}" \
  "https://$hostport$path" | grep -E 'requests:|status codes:|finished in|time for request:'
after=$(ticks)
echo "daemon CPU: $(( (after - before) * 10000 / n )) µs/request over $n requests (pid $pid)"
