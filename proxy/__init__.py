"""The meshlet proxy (Trio, h11, h2) and ``meshlet-proxy-init`` (the pod's iptables rules)."""
