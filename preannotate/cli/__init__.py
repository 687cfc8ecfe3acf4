"""The ``preannotate`` command: run services, the embedded mode, and user commands."""
