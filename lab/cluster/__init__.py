"""The lab's cluster parts: etcd members, TCP relays to cut a controller from etcd, controller processes."""
