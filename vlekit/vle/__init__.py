"""The official VLE format: its checkpoint keys, its config.json, its processor, and conversion to and from vlekit."""
