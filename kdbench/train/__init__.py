"""Training a cohort: the step loop (`cohort`), each member's live state (`trainee`),
evaluation, precision, compiling, DDP, stop requests, tracking sinks, progress reporters and
the record writer of a cohort's members.

May import: errors, core, grid, methods, models, data, runs.
"""
