"""Native CPU kernels behind XLA custom calls, built from the C++ sources beside them when first
used."""
