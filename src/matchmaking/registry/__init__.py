"""The model registry: its conventions (``conventions``), which version is in Production
(``production``), the promotion gate (``gate``, ``measure``, ``holdout``, ``report``,
``promote``), rollback (``rollback``), fleet mode (``fleet``), the promotion lock (``lock``,
``fence``) and the CLI commands (``commands``)."""
