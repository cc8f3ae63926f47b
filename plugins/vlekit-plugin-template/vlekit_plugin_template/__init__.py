"""vlekit-plugin-template: copy this package to start a vlekit plugin (see its README)."""
