"""citymesh: cross-city data exchange with federated training and an audited usage ledger."""

__version__ = "0.1.0"
