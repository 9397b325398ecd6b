"""Wire formats: images and base64, the enc_out blob (cloud -> edge), the raw-frames container."""

from edensplit.wire.blob import (
    BLOB_MEDIA_TYPE,
    WIRE_DTYPES,
    EncodedFrames,
    pack_encoding,
    read_blob_header,
    unpack_encoding,
)
from edensplit.wire.frames import FRAMES_MEDIA_TYPE, pack_frames, unpack_frames
from edensplit.wire.images import MAX_PIXELS, b64decode_field, b64encode, decode_image, encode_png

__all__ = [
    "BLOB_MEDIA_TYPE", "FRAMES_MEDIA_TYPE", "MAX_PIXELS", "WIRE_DTYPES", "EncodedFrames", "b64decode_field",
    "b64encode", "decode_image", "encode_png", "pack_encoding", "pack_frames", "read_blob_header",
    "unpack_encoding", "unpack_frames",
]
