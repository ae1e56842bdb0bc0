"""A grid file → a validated `Grid` → runs and cohorts: the recipe and its defaults
(`recipe`, which imports nothing), the grid's schema, YAML and validation (`config`),
`--set` overrides, the epoch rule for hyper-parameters that count epochs, and the plan.

May import: errors, core, methods, models, data.
"""
