"""Gateway dropins: modules here (and in any ``plugins/`` directory on sys.path,
or listed in config ``plugins.paths``) that provide ``IGatewayPlugin``.

Like ``twisted.plugins``, this package must stay importable without side
effects: no reactor import at module level in any dropin.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
