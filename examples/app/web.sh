# web: answers one HTTP request with what it got from api, found by name on the overlay network.
read -r request
while read -r header && [ "${header%?}" != "" ] && [ "$header" != "" ]; do :; done
data=$(busybox wget -q -O- http://api/ 2>&1) || data="api unreachable ($data)"
printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nweb %s: %s' "${SHOAL_TASK_ID:-$(hostname)}" "$data"
