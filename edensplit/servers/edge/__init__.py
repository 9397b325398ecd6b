"""The edge server: enc_out blobs (or, flow B, frames the cloud encodes for it) in, the generated frame out
(service.py declares it, operations.py does the work, validation.py checks what it is asked)."""
