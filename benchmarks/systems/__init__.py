"""One module per system the reply-job benchmark compares; `harness.py` loads them by name."""
