"""Deprecated: the shared loss pieces moved to `kdbench.methods.losses`.

`from kdbench import losses` keeps working for method files written before the move, with a
`DeprecationWarning`.
"""

import warnings

from kdbench.methods.losses import *  # noqa: F401,F403

warnings.warn("kdbench.losses moved to kdbench.methods.losses; import it from there", DeprecationWarning,
              stacklevel=2)
