"""The quickstart: a dataset it makes, the real loop in one process, a report."""
