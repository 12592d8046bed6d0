"""lookalike's core: pure logic from an image file to its results file.

Nothing here watches folders or decides when work runs (its only threads do
a piece of file I/O alongside: blank results files made ahead, a build's
flushes); `lookalike.daemon` wires these pieces to the world.
"""
