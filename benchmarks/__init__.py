"""symmon benchmarks: ``python -m benchmarks.<name> [--device cpu|cuda] [--quick]``."""
