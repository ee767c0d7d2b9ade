# api: answers one HTTP request with what it got from db, found by name on the overlay network.
read -r request
while read -r header && [ "${header%?}" != "" ] && [ "$header" != "" ]; do :; done
data=$(busybox wget -q -O- "http://db/?pw=$(cat "${SHOAL_SECRETS_DIR:-/run/secrets}/db_password")" 2>&1) || data="db unreachable ($data)"
printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\napi %s: %s\n' "${SHOAL_TASK_ID:-$(hostname)}" "$data"
