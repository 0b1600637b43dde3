"""Tools around the CS/DFS wire protocol: scapy layers, a hex/pcap decoder CLI, a scripted CS peer."""
