"""The synthetic ride-hailing world that stands in for production raw data.

The simulator only: it reads the market catalogue (``matchmaking.markets``) and *writes* raw
data, and its hidden truth tables, in the lake contract (``matchmaking.lake``). Nothing in the
platform imports it but the commands that start it (``cli.py``, ``demo.py``); see
``tests/markets/test_layering.py``.
"""
