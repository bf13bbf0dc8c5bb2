"""The queue: users with weights, jobs, the fair-share policy, submit, claim and settle,
programs and their callbacks, the handler registry, and the APIs over them (api/, predict/,
monitoring/). Imports Django and DRF only: never `devices` or `splines`, not even by name;
other apps plug in through `jobs.handlers.register_handlers` and `jobs.monitoring.stats`."""
