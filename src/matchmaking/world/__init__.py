"""The synthetic ride-hailing world that stands in for production raw data."""
