"""The functional core: the Saga resource's models and the pure transition function. No I/O here."""
