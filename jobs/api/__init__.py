"""The REST API over the queue: views, serializers, errors, parsers, middleware, and
`access` (who may see and do what). Imports `jobs` (models, queue, programs, handlers)."""
