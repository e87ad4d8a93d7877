"""A team's own task types and backends, loaded in every process that looks one up.

A plugin is a module that registers what it adds when imported (`register_task_type(...)`, or a `Quantizer` /
`Runtime` subclass). Importing it in the process that registers a model is not enough: a deployment's flow
run starts in a process of its own (a worker's `python -m prefect.engine`), which imports only the flow's
entrypoint. So the registries load the plugins themselves, on first use, from two sources:

- the `quantgate.plugins` entry-point group of installed packages (a team's package declares
  `[project.entry-points."quantgate.plugins"] mine = "my_team.quantgate_plugin"`): nothing to configure on
  the workers beyond installing the package;
- `QUANTGATE_PLUGINS`, comma-separated module names (a module on the workers' PYTHONPATH, not packaged).

A plugin that cannot be imported is a ConfigError naming it and the setting, not a silent "unknown task
type" later."""

from __future__ import annotations

import functools
import importlib
import threading
from importlib.metadata import entry_points

from quantgate.errors import ConfigError

GROUP = "quantgate.plugins"
_loaded: set[str] = set()
_lock = threading.Lock()


@functools.cache
def _entry_point_modules() -> tuple[str, ...]:
    """The modules the installed packages' entry points name: read once per process (scanning every
    installed distribution's metadata costs tens of milliseconds, and a registry lookup happens several
    times per flow run; a package installed later is seen by the next process, as a worker's run is)."""
    return tuple(ep.value.split(":", 1)[0] for ep in entry_points(group=GROUP))


def plugin_modules() -> list[str]:
    """Every plugin module to load: the entry points' first, then QUANTGATE_PLUGINS' in its order."""
    from quantgate.settings import PluginSettings

    return list(dict.fromkeys([*_entry_point_modules(), *PluginSettings().plugins]))


def load_plugins() -> list[str]:
    """Import each plugin module once per process; the modules this call imported."""
    imported = []
    with _lock:
        for module in plugin_modules():
            if module in _loaded:
                continue
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ConfigError(
                    f"plugin module {module!r} cannot be imported ({exc}): install the package that provides "
                    f"it on this machine (workers included), or fix QUANTGATE_PLUGINS / the {GROUP!r} entry "
                    "point that names it"
                ) from None
            _loaded.add(module)
            imported.append(module)
    return imported
