"""Wire formats (internal): images and base64 (images.py), the enc_out blob (blob.py) and its wire dtypes
(codecs.py), the raw-frames container (frames.py), request options (options.py). Import from those modules."""
