"""The run record: a run folder's files and their one reader (`records`), derived states,
diagnosis and repair of damaged records, lock-file claims, fault classes, the environment
captured in every run, and the identity of each teacher file a run used.

May import: errors, core, grid, models.
"""
