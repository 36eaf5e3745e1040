"""pytest plugin for the calibration gate (being built; see docs/ARCHITECTURE.md)."""
