"""What tests share besides fixtures: specs (`specs`), in-process servers (`servers`), a real `distill up` (`up`) and factories
that make and read rows (`factories`). Fixtures live in the conftest.py files; backends in tests/services.py."""
