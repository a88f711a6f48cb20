"""The test suite: unit/ (in-process, the fast tier), integration/ (marked slow), helpers/ (shared code)."""
