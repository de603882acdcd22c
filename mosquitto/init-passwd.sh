#!/bin/sh
# First-run step (docker compose): create mosquitto/passwd from environment variables, once.
# Users: monitor, dashboard, admin (roles) and one per service, named exactly like the service.
# SERVICE_USERS="web sensor-gw" with WEB_PASSWORD=..., SENSOR_GW_PASSWORD=... (name upper-
# cased, - and . as _). An existing passwd file is left alone: add users with mosquitto_passwd.
set -eu
file=/mosquitto/config/passwd
if [ -s "$file" ]; then
    echo "init-passwd: $file exists, leaving it alone"
    exit 0
fi
: "${MONITOR_PASSWORD:?set MONITOR_PASSWORD (e.g. in .env)}"
: "${DASHBOARD_PASSWORD:?set DASHBOARD_PASSWORD}"
: "${ADMIN_PASSWORD:?set ADMIN_PASSWORD}"
touch "$file"
chmod 0700 "$file"
mosquitto_passwd -b "$file" monitor "$MONITOR_PASSWORD"
mosquitto_passwd -b "$file" dashboard "$DASHBOARD_PASSWORD"
mosquitto_passwd -b "$file" admin "$ADMIN_PASSWORD"
for name in ${SERVICE_USERS:-}; do
    var="$(echo "$name" | tr 'a-z.-' 'A-Z__')_PASSWORD"
    eval "pw=\${$var:-}"
    if [ -z "$pw" ]; then
        echo "init-passwd: $var is not set; skipping service user $name" >&2
        continue
    fi
    mosquitto_passwd -b "$file" "$name" "$pw"
done
chown 1883:1883 "$file" 2>/dev/null || true
echo "init-passwd: wrote $file"
