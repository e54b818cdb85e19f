"""Benchmarks of ttcdsl (not tests, not installed): ``python -m bench`` from the repository root
runs the suite against SGLang's frontend; bench/README.md says what each script measures."""
