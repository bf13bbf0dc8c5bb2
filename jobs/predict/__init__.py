"""`/predict`, the published prediction contract: the waiting hub and its async views.
Imports `jobs` and `jobs.api` (access, serializers)."""
