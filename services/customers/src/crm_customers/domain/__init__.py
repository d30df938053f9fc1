"""The customers domains: one module per aggregate; functions take keyword arguments and a unit of work or a
session, and never commit."""
