"""The fleet report: collect (tracking server, lake) -> model (pure) -> render (static HTML).

``drift`` measures feature drift (PSI); ``report.build_report`` ties the steps together and is
what ``matchmaking report`` and ``matchmaking demo`` call. See docs/monitoring.md.
"""
