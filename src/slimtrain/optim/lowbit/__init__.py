"""Low-bit optimizer states: the codec (``codec.py``: block-wise dynamic-tree and linear maps, the
min–max quantization of bases, one 4-bit packing; ``fp8.py``: float8 e4m3 codes, COAT), how a
rule's moments are stored (``storage.py``), the one-pass Adam step (``kernel.py``: eager reference
and torch.compile) and its C kernel for CPUs (``native.py``, ``cpu.c``, ``cpu_avx512.h``). Modules
are imported one by one (``groups`` reads ``storage``'s choices, ``storage`` reads the rules)."""
