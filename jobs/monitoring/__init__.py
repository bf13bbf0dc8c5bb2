"""The operators' dashboard: figures (stats), SVG charts, Prometheus metrics, the admin
site and its pages, the stats API. Imports `jobs` and `jobs.api`; registered devices come
from whichever app provides them (`stats.provide_device_states`)."""
