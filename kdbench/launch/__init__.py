"""`kdbench run|status|verify`: the worker spec, the workers (claims, teachers, cohorts),
executors (one process, one worker per device, submitit), the dry run's estimate and the
tables these commands print; `kdbench export|import`, result bundles (`bundles`).

May import: errors, core, grid, methods, models, data, runs, train, teachers, tools.
"""
