"""The tests, a package so that modules share helpers by import (`tests.helpers`)."""
