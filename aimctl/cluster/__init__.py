"""Running several controllers on one etcd: leadership with a fencing token, cluster settings, secrets at rest."""
