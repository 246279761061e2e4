"""Wire formats <-> service calls, testable without HTTP."""
