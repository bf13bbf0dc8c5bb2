"""The QPU exercise: the mock QPU handler (`mock`), the program API's QPU parts
(`programs`: `POST /api/programs/`) and the exercise's own routes (`compat`). Imports
`jobs` and `devices`."""
