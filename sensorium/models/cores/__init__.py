"""Core families: one module each (config and module), registered in sensorium.models.registry."""
