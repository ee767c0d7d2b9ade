"""Service discovery: the names of the services on a swarm network (`names`, pure) and each node's DNS server
that answers them (`dns`)."""
