"""What tests share besides fixtures: specs (`specs`), in-process servers (`servers`), a real `distill up` (`up`),
factories that make and read rows (`factories`) and tiny model pairs of each family with its chat template
(`families`). Fixtures live in the conftest.py files; backends in tests/services.py."""
