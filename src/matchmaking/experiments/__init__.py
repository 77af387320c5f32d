"""Online experiments: what each arm of live traffic did (``matchmaking experiment``)."""
