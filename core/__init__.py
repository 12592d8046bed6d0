"""lookalike's core: pure logic from an image file to its results file.

Nothing here starts threads or watches folders; `lookalike.daemon` wires
these pieces to the world.
"""
