"""`kdbench doctor`: checks of the software and the device (`checks`), of what is installed
(data, teachers, the results folder, extras: `installed`), and `--quick`'s training checks.

May import: errors, core, grid, methods, models, data, runs, train, teachers, tools.
"""
