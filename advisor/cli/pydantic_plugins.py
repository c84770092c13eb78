"""pydantic's plugin discovery, skipped when the environment disables it (the CLI does).

pydantic builds every model's validator through ``pydantic.plugin._schema_validator``, which imports
``pydantic.plugin._loader`` on the first model. That module starts with ``from importlib.metadata import
entry_points``: importlib.metadata pulls email, zipfile, csv, socket, calendar... (about 20 ms, a tenth of
``dsadvise estimate``), although with ``PYDANTIC_DISABLE_PLUGINS`` set to ``__all__``, ``1`` or ``true`` its
``get_plugins()`` returns ``()`` before touching entry points (pydantic 2.x, plugin/_loader.py).

:func:`skip_discovery` puts a stand-in for that module in ``sys.modules`` that answers the same ``()`` while
plugins are disabled and hands every other case (the variable changed later, any other attribute) to
pydantic's own module, imported then. Validation is unchanged: the same validators are built.
"""

from __future__ import annotations

import importlib
import os
import sys
import types

LOADER = "pydantic.plugin._loader"
DISABLED = ("__all__", "1", "true")      # the values pydantic's get_plugins() reads as "no plugins at all"


def _disabled() -> bool:
    return os.environ.get("PYDANTIC_DISABLE_PLUGINS") in DISABLED


def _real_loader() -> types.ModuleType:
    """pydantic's own loader module, imported in place of the stand-in."""
    if isinstance(sys.modules.get(LOADER), _StandIn):
        del sys.modules[LOADER]
    return importlib.import_module(LOADER)


class _StandIn(types.ModuleType):
    def get_plugins(self):
        """No plugins while they are disabled (what pydantic's get_plugins answers); else pydantic's answer."""
        if _disabled():
            return ()
        return _real_loader().get_plugins()

    def __getattr__(self, name: str):
        if name.startswith("__"):      # the import system probing a module (__path__, ...): not pydantic's
            raise AttributeError(name)
        return getattr(_real_loader(), name)


def skip_discovery() -> bool:
    """Install the stand-in when plugins are disabled and pydantic's loader is not imported yet; True if done."""
    if not _disabled() or LOADER in sys.modules:
        return False
    sys.modules[LOADER] = _StandIn(LOADER, __doc__)
    return True
