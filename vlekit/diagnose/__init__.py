"""Does the model look? Shortcut probes for a trained VCR run, with paired statistics (``vlekit diagnose``)."""
