"""Identity's domain functions. Each takes a unit of work (or session) and keyword arguments, changes rows and
records events; none commits: the caller's unit of work commits rows and events together."""
