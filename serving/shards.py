"""Which scoring pool owns a city, and the refusal a pool answers for another pool's city.

Several pools (Deployments of the chart's ``shards`` values) each own a set of cities and size
their model cache to hold them. Dispatch reaches the right pool by the city in the path
(``POST /v1/cities/{city}/rank``: an ingress routes ``/v1/cities/<city>/`` to the pool's
Service) or by the ``X-Matchmaking-City`` header where the ingress routes on headers. A pool
asked for a city it does not own answers 421 (Misdirected Request) naming the pool that does,
in the message and in the ``X-Matchmaking-Pool`` header. Every pool is given the whole map
(``MATCHMAKING_SERVE_SHARDS``) and its own name (``MATCHMAKING_SERVE_SHARD``).
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.errors import ServiceError
from serving.settings import ANY_CITY, ServeSettings

#: The header naming a request's city, for ingresses that route on headers.
CITY_HEADER = "x-matchmaking-city"
#: The response header naming the pool that owns the city asked for.
POOL_HEADER = "X-Matchmaking-Pool"


@dataclass(frozen=True)
class ShardMap:
    """The pools and their cities; ``this`` is the pool this process is (None: no shards)."""

    owners: dict[str, str]  # city -> pool
    catch_all: str | None  # the pool owning every city no other pool names
    this: str | None

    @classmethod
    def from_settings(cls, settings: ServeSettings) -> ShardMap:
        owners = {
            city: pool
            for pool, cities in settings.shards.items()
            for city in cities
            if city != ANY_CITY
        }
        catch_all = next((p for p, cities in settings.shards.items() if ANY_CITY in cities), None)
        return cls(owners, catch_all, settings.shard)

    def owner(self, city: str) -> str | None:
        """The pool that owns ``city`` (None when no pool does, or there are no shards)."""
        return self.owners.get(city, self.catch_all)

    def check(self, city: str) -> None:
        """Refuse ``city`` unless this pool owns it (no shards: every city is ours).

        Raises:
            ServiceError: 421 naming the owning pool, or 404 when no pool owns the city.
        """
        if self.this is None:
            return
        owner = self.owner(city)
        if owner == self.this:
            return
        if owner is None:
            raise ServiceError(
                404,
                "city_not_sharded",
                f"no scoring pool owns city {city!r} (this is pool {self.this!r}); add it to "
                "a pool's cities in the chart's shards values",
            )
        raise ServiceError(
            421,
            "wrong_shard",
            f"city {city!r} is served by pool {owner!r}, not by this pool ({self.this!r}); "
            f"send it to POST /v1/cities/{city}/rank through the ingress, or to pool {owner!r}",
            details=[
                {
                    "loc": ["booking", "city"],
                    "msg": f"owned by pool {owner!r}",
                    "type": "wrong_shard",
                }
            ],
            headers={POOL_HEADER: owner},
        )
