"""What the tests, benchmarks and docs scripts use and production code never imports: synthetic scenes with
known geometry (:mod:`.synthetic_scene`, :mod:`.synthetic_4dnex`, :mod:`.synthetic_splats`), the official 4DNeX
post-optimisation as a baseline (:mod:`.official_registration`) and readers of the pack's own output files
(:mod:`.readers`). A test (``tests/test_layers.py``) checks that nothing outside this package imports it."""
