"""Package metadata and console entry points of the split server-load-balancer testbed."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="splitlb-testbed",
    version="0.1.0",
    description="Reference testbed for a split (Control Segment / Data Flow Segment) server load balancer",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["slbproto*", "slbcore*", "slbtools*", "controller*", "nodes*", "topo*"]),
    package_data={"topo": ["configs/*.toml"]},
    install_requires=["os-ken>=4.2", "pyroute2>=0.9", "scapy>=2.5"],
    entry_points={
        "console_scripts": [
            "slb-csd=nodes.csd:main",
            "cs=nodes.cscli:main",
            "slb-dfsd=nodes.dfsd:main",
            "dfs=nodes.dfscli:main",
            "slb-decode=slbtools.decode:main",
            "slb-topo=topo.run:main",
            "slb-demo=topo.demo:main",
        ]
    },
)
