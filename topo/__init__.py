"""Topologies: pure descriptions read from testbed files, turned into Mininet networks by `topo.lab`."""
