"""What the tests share: fakes, clocks, real processes and servers, marks. Not tests themselves.

Imported as `helpers.<module>`: pytest puts tests/ on sys.path (tests/conftest.py's directory, in
its default `prepend` import mode), as it does for every test directory without an __init__.py.
"""
