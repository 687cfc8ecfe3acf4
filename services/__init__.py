"""The five services, one folder each; none imports another."""
