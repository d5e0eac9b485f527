"""Reports made from a capture's model: one module per output kind."""
