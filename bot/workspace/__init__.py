"""The tool placed into every review workspace (``rwctl.sh``)."""
