"""Configuration: where the YAML lives, composing it, checking it, building its parts."""
