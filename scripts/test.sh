#!/usr/bin/env bash
# careloop's test command (the README's second set-up command; .ci/run calls it too).
# Installs what the tests need into .venv, starts Redis and PostgreSQL where they are not
# running, installs the Twilio mock (Prism), ical.js (the invite tests), Debian's
# chromium + chromium-driver (the browser test) and dovecot-imapd (the RSVP mailbox test),
# then runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
PRISM_VERSION=5.14.2
# Twilio's published OpenAPI description of its 2010-04-01 API, as shipped inside this npm
# package (twilio-oai/spec/json/twilio_api_v2010.json); pinned by version and by checksum.
TWILIO_SPEC_PACKAGE=@twilio-alpha/mcp@0.7.0
TWILIO_SPEC_PATH=twilio-oai/spec/json/twilio_api_v2010.json
TWILIO_SPEC_SHA256=475b69553e34e797af05d34679cdad3bc3b8b4b8b92e6ac044fa6ebc255bf052
TWILIO_SPEC=.peers/twilio/spec/json/twilio_api_v2010.json
# Mozilla's ical.js (Thunderbird's iCalendar parser) reads careloop's invites in the tests;
# pinned by version (npm checks the package against the registry's integrity hash).
ICALJS_VERSION=2.2.1
ICALJS=.peers/icaljs/node_modules/ical.js/package.json

log() { printf '== %s\n' "$*"; }

if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
log "installing careloop and its test dependencies"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

if [ ! -x .peers/prism/node_modules/.bin/prism ]; then
  log "installing Prism $PRISM_VERSION (Twilio's API shape for the tests)"
  npm install --silent --no-audit --no-fund --prefix .peers/prism "@stoplight/prism-cli@$PRISM_VERSION" >/dev/null
fi

if [ ! -f "$TWILIO_SPEC" ]; then
  log "installing Twilio's OpenAPI description ($TWILIO_SPEC_PACKAGE, from npm)"
  mkdir -p .peers/twilio
  tarball=$(cd .peers/twilio && npm pack --silent "$TWILIO_SPEC_PACKAGE" | tail -n 1)
  tar -xzf ".peers/twilio/$tarball" -C .peers/twilio --strip-components=2 "package/$TWILIO_SPEC_PATH"
  rm -f ".peers/twilio/$tarball"
  echo "$TWILIO_SPEC_SHA256  $TWILIO_SPEC" | sha256sum --check --quiet || {
    rm -f "$TWILIO_SPEC"; echo "Twilio's OpenAPI description does not match its pinned checksum" >&2; exit 1; }
fi

if [ ! -f "$ICALJS" ] || ! grep -q "\"version\": \"$ICALJS_VERSION\"" "$ICALJS"; then
  log "installing ical.js $ICALJS_VERSION (an independent reader of careloop's invites)"
  npm install --silent --no-audit --no-fund --prefix .peers/icaljs "ical.js@$ICALJS_VERSION" >/dev/null
fi

# The member-page browser test drives Debian's headless Chromium through Debian's
# chromium-driver (never a browser downloaded by a test tool). Installed here when missing.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Debian's chromium and chromium-driver (for the member-page browser test)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  else
    echo "The member-page browser test needs Debian's chromium and chromium-driver." >&2
    echo "Install them (as root: apt-get install chromium chromium-driver) and run this again." >&2
    exit 1
  fi
fi

# The RSVP test reads replies from a real IMAP server: Debian's Dovecot, run by the test
# itself as its own process (its own config, port and maildir). Installed here when missing.
if [ ! -x /usr/sbin/dovecot ] || [ ! -x /usr/lib/dovecot/imap ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Debian's dovecot-imapd (for the RSVP mailbox test)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dovecot-imapd >/dev/null
  else
    echo "The RSVP mailbox test needs Debian's dovecot-imapd (an IMAP server it runs itself)." >&2
    echo "Install it (as root: apt-get install dovecot-imapd) and run this again." >&2
    exit 1
  fi
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {
  for _ in $(seq 1 60); do port_open "$1" && return 0; sleep 0.5; done
  echo "$2 did not come up on 127.0.0.1:$1" >&2
  return 1
}

if ! port_open 6379; then
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_for_port 6379 Redis
fi

if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start
  for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
  pg_isready -h 127.0.0.1 -p 5432
fi

log "running the tests"
exec .venv/bin/python -m pytest "$@"
