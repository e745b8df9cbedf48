"""The shipped flow priors (package data: NAME.safetensors + NAME.json, registry.json)."""
