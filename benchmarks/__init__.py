"""`make bench`: benchmark scripts; each module's ``main(report)`` writes reports/<name>.md."""
