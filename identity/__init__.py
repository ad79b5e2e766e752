"""The identity service: the mesh's certificate authority (CSR + ServiceAccount token in)."""
