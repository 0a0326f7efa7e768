"""Sensor base classes (Sluice's own)."""
