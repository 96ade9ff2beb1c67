#!/usr/bin/env bash
# Every benchmark of issue #14 in one run, each figure beside its baseline measured in the
# same run (README "Benchmarks"):
#
#   bash bench/run.sh            # the full run (about 6-8 minutes on 2 cores)
#   bash bench/run.sh --quick    # shorter runs of each (about 3 minutes): smaller samples
#
# Needs what scripts/test.sh needs (Python >= 3.11, Redis and PostgreSQL installed; it starts
# them when they are down) plus Debian's wrk and Postfix's smtp-sink, which it installs with
# apt-get when missing and run as root (else it says what to install and stops). Uses Redis
# DB 14 (flushed) and PostgreSQL databases of its own (careloop_bench_*, dropped afterwards);
# nothing talks to anything but 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
case "${1:-}" in
  --quick) QUICK=1 ;;
  "") ;;
  *) echo "usage: bash bench/run.sh [--quick]" >&2; exit 2 ;;
esac

PYTHON=${PYTHON:-python3}
log() { printf '\n== %s\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .

missing=()
command -v wrk >/dev/null || missing+=(wrk)
[ -x /usr/sbin/smtp-sink ] || command -v smtp-sink >/dev/null || missing+=(postfix)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing ${missing[*]} (Debian) for the benchmarks"
    # Postfix only for its smtp-sink tool: no mail system is configured or started.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "The benchmarks need Debian's ${missing[*]}." >&2
    echo "Install them (as root: apt-get install ${missing[*]}) and run this again." >&2
    exit 1
  fi
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! port_open 6379; then
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 60); do port_open 6379 && break; sleep 0.5; done
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start
  for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
fi

log "machine"
echo "date:   $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "cpu:    $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "memory: $(awk '/MemTotal/ {printf "%.1f GB", $2 / 1048576}' /proc/meminfo)"
echo "load:   $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min; above 0 means other work shared the cores)"

if [ "$QUICK" = 1 ]; then
  HTTP_SECONDS=5 WORKER_EVENTS=300 BACKLOG=2000 E2E_SECONDS=15 ROUTING_N=5000
else
  HTTP_SECONDS=15 WORKER_EVENTS=715 BACKLOG=5000 E2E_SECONDS=60 ROUTING_N=20000
fi
PY=.venv/bin/python

log "4. routing (in process)"
$PY -m bench.bench_routing "$ROUTING_N"
log "1, 2. intake and batch intake over HTTP; web memory (1, 6)"
$PY -m bench.bench_http "$HTTP_SECONDS"
log "3. workers, and urgent first under a backlog; worker memory (6)"
$PY -m bench.bench_workers "$WORKER_EVENTS" "$BACKLOG"
log "5. end to end, 100 events/s with fan-out 3 for ${E2E_SECONDS}s"
$PY -m bench.bench_e2e 100 "$E2E_SECONDS"
