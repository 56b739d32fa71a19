"""Devices and processes: the mesh, sharding helpers, host memory settings."""
