"""The os-ken application of the DFS: a thin shim between the switch and :mod:`slbcore.dfs`."""
