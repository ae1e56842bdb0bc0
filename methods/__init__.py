"""Built-in distillation losses, one per file. kdbench imports every module here by path."""
