"""Plain helpers for the tests and the benchmarks: starting real processes, a throwaway
PostgreSQL, load generation, fixtures shared between areas. Imports the apps; never test
modules."""
