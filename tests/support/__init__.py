"""Every helper shared by more than one test module lives here, imported as ``support.<module>``.

pytest puts ``tests/`` on ``sys.path`` (``pythonpath`` in pyproject.toml). Fixtures stay in the
``conftest.py`` files, which pytest finds by itself and nothing imports; those conftests build
their fixtures from these modules. Outside the suite (the benchmarks, run from the repo root)
the same modules are ``tests.support.<module>``. ``tests/unit/test_helper_imports.py`` holds
the suite to this.
"""
