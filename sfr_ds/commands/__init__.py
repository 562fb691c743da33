"""One module per ``sfr-ds`` sub-command beyond ``train``; each exposes a click command ``command``."""
