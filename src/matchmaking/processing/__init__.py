"""The data step: validate raw partitions, quarantine bad rows, publish a feature dataset."""
