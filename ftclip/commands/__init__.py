"""One module per ``ftclip`` command (see ftclip/cli.py)."""
