"""`kdbench teachers fetch|eval|train`: the reference release, its record, measuring
teachers and training them with the cohort harness.

May import: errors, core, grid, models, data, runs, train.
"""
