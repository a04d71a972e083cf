"""``python -m models.sgmse.enhance NOISY.wav OUT.wav [--noise-ref REF.wav]``.

Importing this module (``import models.sgmse.enhance``) would make Python bind the module over
the function ``models.sgmse.enhance``; the module is therefore made callable and forwards calls
to the function, so ``models.sgmse.enhance(model, wave, ...)`` works either way.
"""

from __future__ import annotations

import sys
import types

from ._enhance_cli import main
from ._sampling import enhance as _enhance


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return _enhance(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
