"""Not a library: this file only gives examples/conftest.py the module name
``examples.conftest``.  Without it, pytest would import it as ``conftest``
and replace tests/conftest.py under that name, which tests import helpers
from (``from conftest import test_config``).  The example directories below
stay plain directories (an example's plugins/ must have no __init__.py).
"""
