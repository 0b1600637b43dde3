"""Pure load-balancer logic: the Control Segment (``slbcore.cs``) and the Data Flow Segment (``slbcore.dfs``).

Nothing in this package owns a socket or reads a clock: callers pass time in and send what is returned.
"""
