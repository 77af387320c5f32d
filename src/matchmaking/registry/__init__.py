"""Registry conventions: names, the ``production`` alias, promotion and rollback."""
