"""migemu: a QEMU 7.2 live-migration emulator.

Layers (imports point downward only): ``qapi`` (schema, validation, QMP errors, JSON codec),
``emulator`` (dispatch, VM, migration state, QMP/HMP servers, command line, dashboard),
``multifd`` (wire formats, compression methods, channels), ``tools`` (benchmarks, transcripts).
"""

__version__ = "0.1.0"
