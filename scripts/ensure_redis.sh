#!/usr/bin/env bash
# Make sure a Redis answers on 127.0.0.1:6379 (these machines start one; CI may need to).
set -euo pipefail
ping() { python3 - <<'PY'
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", 6379), timeout=1)
    s.sendall(b"PING\r\n"); ok = s.recv(16).startswith(b"+PONG"); s.close()
except OSError:
    ok = False
sys.exit(0 if ok else 1)
PY
}
if ping; then exit 0; fi
command -v redis-server >/dev/null || { apt-get install -y -q redis-server >/dev/null; }
mkdir -p /tmp/dowse-redis
redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
  --dir /tmp/dowse-redis --logfile /tmp/dowse-redis/redis.log
for _ in $(seq 1 50); do ping && exit 0; sleep 0.1; done
echo "redis-server did not start" >&2; exit 1
