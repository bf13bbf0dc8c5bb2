#!/bin/sh
# The image's roles; the first argument picks one, the rest go to its command.
set -eu
role=${1:-web}
[ $# -gt 0 ] && shift
# The health check runs beside the role and asks this file which one it is.
printf '%s\n' "$role" >/tmp/zypher-role
case "$role" in
    web)
        python /app/docker/wait_for_db.py
        exec gunicorn zypher.asgi --access-logfile - "$@"
        ;;
    dispatcher)
        python /app/docker/wait_for_db.py
        exec python manage.py run_dispatcher "$@"
        ;;
    migrate)
        python /app/docker/wait_for_db.py
        python manage.py migrate --noinput "$@"
        # The first admin only when its password is given: a generated one would be
        # printed into a log nobody reads.
        if [ -n "${ZYPHER_ADMIN_PASSWORD:-}" ]; then
            exec python manage.py ensure_admin
        fi
        ;;
    agent)
        exec python manage.py run_device "$@"
        ;;
    manage)
        exec python manage.py "$@"
        ;;
    *)
        exec "$role" "$@"
        ;;
esac
