"""Who runs the jobs: registered devices and their pool, the signed agent protocol, the
agent, the console, the dispatcher (dispatcher/) and the QPU exercise (qpu/). Imports
`jobs`, never `splines`; hands `jobs` its handler and dashboard rows in `apps.ready()`."""
