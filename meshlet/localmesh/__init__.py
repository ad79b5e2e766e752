"""A Kubernetes-like node on one machine, made of network namespaces, with the mesh in it.

``meshlet demo`` runs on it, and so do the end-to-end tests (``tests/harness`` imports it):

- ``netns``: namespaces, processes in them, sockets opened inside them;
- ``node``: a node namespace with a bridge, pods wired to it, kube-proxy-style Service VIPs;
- ``programs``: the meshlet programs (proxy, proxy-init, identity, destination, webhook);
- ``kubelet``: a pod's manifest, its injection, and the sidecar settings the kubelet resolves;
- ``meshnode``: identity and destination in local mode, meshed pods, discovery's YAML;
- ``mesh_app``, ``grpc_app``: applications to run in pods (HTTP/1.1 and gRPC servers).

Everything needs root (namespaces, iptables) and is removed on ``close()``.
"""
