"""The ground floor: file-system primitives every other layer uses (atomic writes and staged
outputs, cross-process locks, user text files, disk-space checks). Imports nothing above
:mod:`fourd_core.errors` and :mod:`fourd_core.interrupts`."""
