"""Low helpers every layer may use: hashing, atomic outputs, tables, progress, devices, versions, caches."""
