"""One module per analysis; each registers itself with ``plastix.report.registry.analysis``.

Every module in this folder is imported here, so adding an analysis is adding a file.
"""

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
