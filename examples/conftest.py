"""Fixtures for the examples' own tests: the real-gateway fixtures of tests/conftest.py.

pytest only shows a conftest's fixtures to tests below its directory, so the
examples re-export the ones they use (start_gateway needs dev_key; mint too).
Build configs with ``tests.conftest.test_config`` (imported under another
name in a test module, or pytest would collect it as a test).
"""

# pytest puts each test module's directory on sys.path (the default "prepend" import
# mode), and rtgateway's `plugins` package, like twisted.plugins, adds every `plugins/`
# directory on sys.path to its search path when it is first imported. Import it here,
# before examples/*/ join sys.path, so an example's dropins load only in the gateways
# whose config lists them in plugins.paths, not in every gateway of the test run.
import plugins  # noqa: F401
from tests.conftest import dev_key, mint, start_gateway

__all__ = ["dev_key", "mint", "start_gateway"]
