"""The lake contract: where raw data and feature datasets live and how they are read and written.

Every production layer (processing, training, evaluation, promotion, serving) reads and writes
data through this package and never through the simulator (``matchmaking.world``), which is
only one *writer* of raw data in this contract; a company's own ingestion is another.

- ``matchmaking.lake.storage``: the ``Location`` of data (a local path or an fsspec URI) and
  whole-file I/O on it.
- ``matchmaking.lake.raw``: the raw (and simulator truth) tables' layout, atomic partition
  writes and the partition readers. Its public names are re-exported here, so
  ``from matchmaking import lake; lake.read_partitions(...)`` is the usual spelling. They are
  loaded on first use, so importing ``matchmaking.lake.storage`` (the settings do) does not
  import pyarrow: the DAG files' parse time stays what it was.
- ``matchmaking.lake.datasets``: published feature datasets (files, manifest, ``_SUCCESS``,
  content digest) and finding a city's datasets.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matchmaking.lake.raw import (
        COMPRESSION,
        DRIVERS_FILE,
        RAW,
        TRUTH,
        PartitionWriter,
        check_partitions,
        city_dir,
        clean_stale,
        describe_days,
        ensure_writable,
        is_complete,
        list_cities,
        list_dates,
        parquet_writer,
        partition_dir,
        read_driver_truth,
        read_drivers,
        read_partitions,
        read_truth,
        schema_problems,
        write_file_atomic,
        write_parquet,
        write_partition,
    )

__all__ = [
    "COMPRESSION",
    "DRIVERS_FILE",
    "RAW",
    "TRUTH",
    "PartitionWriter",
    "check_partitions",
    "city_dir",
    "clean_stale",
    "describe_days",
    "ensure_writable",
    "is_complete",
    "list_cities",
    "list_dates",
    "parquet_writer",
    "partition_dir",
    "read_driver_truth",
    "read_drivers",
    "read_partitions",
    "read_truth",
    "schema_problems",
    "write_file_atomic",
    "write_parquet",
    "write_partition",
]


def __getattr__(name: str) -> Any:
    """The raw-table API of ``matchmaking.lake.raw``, imported on first use (PEP 562)."""
    if name in __all__:
        return getattr(importlib.import_module("matchmaking.lake.raw"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
