# db: answers one HTTP request with its rows, to a client that knows the password (a swarm secret).
read -r request
while read -r header && [ "${header%?}" != "" ] && [ "$header" != "" ]; do :; done
case "$request" in
  *"pw=$(cat "${SHOAL_SECRETS_DIR:-/run/secrets}/db_password") "*) body="rows from db" ;;
  *) body="wrong password" ;;
esac
printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n%s\n' "$body"
