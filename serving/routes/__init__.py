"""The service's routers, one per resource: ``ops`` (health, readiness, metrics), ``models``
(what is loaded), ``scoring`` (``/v1/rank``, ``/v1/match``)."""
