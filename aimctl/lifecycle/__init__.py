"""The persona lifecycle: archives and restore, gold-image personas, spare rehearsals.

Operations of their own kinds (``archive``, ``restore``, ``rehearsal``, ``provision``), run by the
same journaled step runner as a failover and built from its parts (the fence, the storage, boot
config, switch, power and heartbeat steps). ``policy`` holds the decisions; ``service`` is what the
controller calls.
"""
