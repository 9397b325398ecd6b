"""`edensplit ui`: a web page to interpolate a clip (drop a video or a frame pair, choose the multiplier, watch it,
cancel it, download the result), running the command line's own job code."""
