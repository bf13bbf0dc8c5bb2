"""The dispatcher behind `manage.py run_dispatcher`: the asyncio loop (`loop`) and its
one database thread, the local devices' worker processes (`worker`), the remote and
simulated devices (`remote`), and the supervisor that restarts its background tasks
(`supervisor`). Imports `jobs` (queue, results, notifications, programs) and `devices`
(pool, protocol, models, qpu); `remote` gets the loop's database runner, stop event and
lease length, never the loop itself, and nothing outside the dispatcher imports it but
the `run_dispatcher` command."""
