"""citymesh: cross-city data exchange, federated training and an audited usage log."""

__version__ = "0.1.0"
