"""The building blocks every part of kdbench uses: the registry of named entries, hyper-parameters
read from a signature, atomic writes, once-only warnings, the console, and `--device` parsing.

May import: errors.
"""
