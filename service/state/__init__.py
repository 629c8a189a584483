"""State that outlives the process, and the process's memory.

``store`` keeps checkpoints and the journal (nothing is lost across a restart);
``memory`` gives freed heap back to the operating system; ``collector`` tunes the cyclic
garbage collector for a process that holds a whole fleet.

May import: ``service.records``, ``service.errors``.
"""
