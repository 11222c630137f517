"""Operator command-line tools; each module's ``main`` is a console script in pyproject.toml."""
