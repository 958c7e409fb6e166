"""The chaos soak, as Pacemaker's CTS runs one: random faults from the lab's catalogue on random
bodies, a real controller acting on them, an operator answering what waits through the real
command line, and the invariants checked after every round (``rules``: pure decisions; ``soak``:
the runner).
"""
