"""Models: plain networks in ``nets``, LightningModules (systems) beside them, and the factory."""
