"""YAML presets, shipped with the package so that `adapler run --config NAME` works anywhere."""
