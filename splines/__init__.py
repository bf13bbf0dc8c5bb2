"""B-splines drawn on images: tck validation, evaluation, drawing, the page and the render
API, and the `spline` job handler (registered with `jobs` in `apps.ready()`). Imports
`jobs` only for that registration; never `devices`."""
