"""`kdbench bench` (throughput, the GEMM peak, the estimate's measuring primitives) and
`kdbench list` (what is registered, the README's method table).

May import: errors, core, grid, methods, models, data, runs, train.
"""
