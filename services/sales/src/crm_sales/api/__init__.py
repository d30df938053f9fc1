"""The gRPC transport of sales, one servicer per proto service: authorize, open the unit of work, call the
domain, convert. No business rules live here."""
