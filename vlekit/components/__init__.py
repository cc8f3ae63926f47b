"""The registered components (text encoders, vision encoders, fusions, heads) and their building blocks."""
