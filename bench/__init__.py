"""Benchmarks: the offloaded load balancer against a switch-only ceiling and HAProxy (`make bench`).

``bench.run`` is the entry point; ``bench.topo_bench`` builds the benchmark testbed and measures
it; ``bench.report`` turns the results document into ``REPORT.md`` and plots.
"""
