"""Small servers the lab runs inside its namespaces (``python -m higgs.lab.services.X``)."""
