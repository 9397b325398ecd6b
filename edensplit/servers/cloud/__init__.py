"""The cloud server: frames in, the conditioning encoder's `enc_out` blob out (service.py declares it,
operations.py does the work)."""
